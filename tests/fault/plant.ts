// Planted bugs for showing that the fault suite's checker can fail, and a slow disk. Loaded into a server process with
// `node --import tsx --import ./tests/fault/plant.ts server.ts ...` and chosen by CHATPLUS_PLANT.
// Production code has no hook for this: the module patches the real classes in place.
import { ConnectionManager } from "../../connections/manager.js";
import { Store } from "../../store/store.js";

const plant = process.env.CHATPLUS_PLANT;

if (plant === "no-dedup") {
  // Neither record nor look up earlier responses: a request retried after a failover is applied again.
  const prototype = Store.prototype as unknown as { dedupLookup: () => undefined; writeEntry: (entry: { requestId: number | null }, ...rest: unknown[]) => void };
  prototype.dedupLookup = () => undefined;
  const writeEntry = prototype.writeEntry;
  prototype.writeEntry = function (this: unknown, entry: { requestId: number | null }, ...rest: unknown[]) {
    writeEntry.call(this, { ...entry, requestId: null }, ...rest);
  };
} else if (plant === "ack-before-backups") {
  // Answer clients as soon as this server's own transaction commits, before any backup has the entry.
  type Pending = { index: number; data: Record<string, unknown>; resolve: (outcome: unknown) => void };
  const prototype = ConnectionManager.prototype as unknown as { propose: (batch: unknown) => void };
  const original = prototype.propose;
  prototype.propose = function (this: { pendingWrites: Pending[] }, batch: unknown) {
    original.call(this, batch);
    for (const pending of this.pendingWrites.splice(0)) pending.resolve({ ok: true, index: pending.index, data: pending.data });
  };
} else if (plant === "slow-sync") {
  // Not a bug: a slow disk. Every fsync the primary runs off its event loop takes
  // CHATPLUS_SLOW_SYNC_MS longer, so a test can see what waits for it.
  const delayMs = Number(process.env.CHATPLUS_SLOW_SYNC_MS ?? "500");
  const prototype = Store.prototype as unknown as { syncLog: (done: (error: Error | null) => void) => void };
  const original = prototype.syncLog;
  prototype.syncLog = function (this: unknown, done: (error: Error | null) => void) {
    setTimeout(() => original.call(this, done), delayMs);
  };
} else if (plant === "slow-log-sync") {
  // Not a bug: a slow disk for the fsync a server runs on its own thread (a backup's, at the end of
  // a peer read). It blocks the event loop CHATPLUS_SLOW_SYNC_MS longer, as a slow fdatasync would.
  const delayMs = Number(process.env.CHATPLUS_SLOW_SYNC_MS ?? "100");
  const prototype = Store.prototype as unknown as { syncLogNow: () => void };
  const original = prototype.syncLogNow;
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  prototype.syncLogNow = function (this: unknown) {
    Atomics.wait(sleeper, 0, 0, delayMs);
    original.call(this);
  };
} else if (plant !== undefined) {
  throw new Error(`unknown CHATPLUS_PLANT ${plant}`);
}
