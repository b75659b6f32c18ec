// The exactly-once index of a real Store file: every logged (clientId, requestId) is found, whether its
// entry is still held in memory or was moved to request_index in a chunk of committed entries; across
// a reopen, a truncation and a failed write transaction; and a truncation never reaches committed
// entries.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Command, LogEntry } from "../store/commands.js";
import { Store } from "../store/store.js";

let scratch: string;
const stores: Store[] = [];
beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), "chatplus-requests-"));
});
afterAll(() => {
  for (const store of stores) store.close();
  rmSync(scratch, { recursive: true, force: true });
});

function open(name: string): Store {
  const store = new Store(join(scratch, name));
  stores.push(store);
  return store;
}

const clients = ["client-aaaa", "client-bbbb", "client-cccc", "client-dddd", "client-eeee"];

/** A log: config, bootstrap, one user per client, a channel, then `posts` posts round-robin. */
function buildLog(store: Store, posts: number): { key: [string, number]; index: number }[] {
  const propose = (items: { clientId: string | null; requestId: number | null; command: Command }[]) => {
    const proposals = store.proposeBatch(1, items);
    for (const proposal of proposals) expect(proposal.result.ok, JSON.stringify(proposal.result)).toBe(true);
    return proposals.map((proposal) => proposal.entry.index);
  };
  propose([{ clientId: null, requestId: null, command: { op: "config", primary: 1, members: [1] } }]);
  propose([{ clientId: null, requestId: null, command: { op: "bootstrap", channels: ["general"] } }]);
  const written: { key: [string, number]; index: number }[] = [];
  const userIds = clients.map((clientId, position) => {
    const [index] = propose([{ clientId, requestId: 1, command: { op: "register", username: `user${position}`, salt: "s", hash: "h", sessionId: `session-${position}`, ts: 1 } }]);
    written.push({ key: [clientId, 1], index });
    return index;
  });
  // A client whose ids do not increase: its lower id must still be found (the highest-id shortcut).
  const [late] = propose([{ clientId: "client-hhhh", requestId: 50, command: { op: "register", username: "late", salt: "s", hash: "h", sessionId: "session-late", ts: 1 } }]);
  const [early] = propose([{ clientId: "client-hhhh", requestId: 7, command: { op: "post", actor: late, channel: "general", body: "lower id", ts: 2 } }]);
  written.push({ key: ["client-hhhh", 50], index: late }, { key: ["client-hhhh", 7], index: early });
  for (let done = 0; done < posts; ) {
    const batch = [];
    for (let k = 0; k < 25 && done < posts; k += 1, done += 1) {
      const position = done % clients.length;
      batch.push({ clientId: clients[position], requestId: 2 + Math.floor(done / clients.length), command: { op: "post", actor: userIds[position], channel: "general", body: `post ${done}`, ts: 2 } as Command });
    }
    const indexes = propose(batch);
    batch.forEach((item, position) => written.push({ key: [item.clientId, item.requestId], index: indexes[position] }));
    // As the manager does once the batch's entries are committed.
    store.noteCommitted(store.lastIndex);
  }
  return written;
}

function indexRows(store: Store): number {
  return (store.db.prepare("SELECT count(*) AS n FROM request_index").get() as { n: number }).n;
}

function expectAllFound(store: Store, written: { key: [string, number]; index: number }[]): void {
  for (const { key, index } of written) expect(store.dedupLookup(...key)?.logIndex, `request ${key.join(" #")}`).toBe(index);
}

describe("the exactly-once index", () => {
  it("finds every request in memory or in request_index, across a reopen, a truncation and a failed transaction", () => {
    const store = open("requests.db");
    const written = buildLog(store, 3000);
    // 3,000 posts and a few setup entries: at least two chunks of 1,024 were moved, the newest
    // entries (fewer than a chunk) are in memory.
    const moved = Number(store.getMeta("request_index_upto"));
    expect(moved).toBeGreaterThanOrEqual(2048);
    expect(store.lastIndex - moved).toBeGreaterThan(0);
    expect(store.lastIndex - moved).toBeLessThan(1024 + 25);
    expect(indexRows(store)).toBe(written.filter((item) => item.index <= moved).length);
    expectAllFound(store, written);
    expect(store.dedupLookup("client-aaaa", 999_999)).toBeUndefined();
    expect(store.dedupLookup("client-zzzz", 2)).toBeUndefined();
    expect(store.dedupLookup("client-hhhh", 8)).toBeUndefined();
    expect(store.dedupLookup("client-hhhh", 51)).toBeUndefined();
    const sample = written[written.length - 1];
    expect(store.dedupLookup(...sample.key)).toMatchObject({ logIndex: sample.index, command: { op: "post" }, data: { message: { id: sample.index } } });

    // Reopened: the in-memory part is rebuilt from the log.
    store.close();
    const reopened = open("requests.db");
    expectAllFound(reopened, written);
    expect(reopened.dedupLookup("client-hhhh", 8)).toBeUndefined();

    // A truncation drops the requests of the dropped entries, and they can be logged again.
    const keep = reopened.lastIndex - 40;
    const dropped = written.filter((item) => item.index > keep);
    const droppedEntries = reopened.entries(keep + 1, reopened.lastIndex);
    expect(reopened.truncateAfter(keep)).toBe("replay");
    for (const { key } of dropped) expect(reopened.dedupLookup(...key)).toBeUndefined();
    expectAllFound(reopened, written.filter((item) => item.index <= keep));
    reopened.appendEntries(droppedEntries);
    expectAllFound(reopened, written);

    // A committed entry is never truncated: request_index holds only such entries.
    expect(() => reopened.truncateAfter(moved - 1)).toThrow(/keeps the committed entries/);

    // A transaction that fails (here: an entry repeating a logged request) leaves nothing behind.
    const last = reopened.lastIndex;
    const repeat: LogEntry = { ...droppedEntries[droppedEntries.length - 1], index: last + 2 };
    const fresh: LogEntry = { index: last + 1, epoch: 1, clientId: "client-ffff", requestId: 1, command: { op: "config", primary: 1, members: [1] } };
    expect(() => reopened.appendEntries([fresh, repeat])).toThrow(/is logged once/);
    expect(reopened.lastIndex).toBe(last);
    // Another entry takes index last + 1: the failed one's request must not point at it.
    reopened.appendEntries([{ ...fresh, clientId: "client-gggg" }]);
    expect(reopened.dedupLookup("client-ffff", 1)).toBeUndefined();
    expect(reopened.dedupLookup("client-gggg", 1)?.logIndex).toBe(last + 1);
    expectAllFound(reopened, written);

    // A catch-up (entries known committed, logged without applying) indexes them in the same
    // transaction, straight into request_index.
    const caughtUp = open("caught-up.db");
    const entries = reopened.entries(1, reopened.lastIndex);
    caughtUp.noteCommitted(entries.length);
    for (let from = 0; from < entries.length; from += 500) caughtUp.appendEntries(entries.slice(from, from + 500), { deferApply: true });
    expect(Number(caughtUp.getMeta("request_index_upto"))).toBe(entries.length);
    expect(indexRows(caughtUp)).toBe(entries.filter((entry) => entry.requestId !== null).length);
    // A server answers from the log only once its entries are applied (their responses filled in).
    while (caughtUp.applyPending(700) > 0);
    expectAllFound(caughtUp, [...written, { key: ["client-gggg", 1], index: last + 1 }]);
    expect(caughtUp.dedupLookup("client-hhhh", 8)).toBeUndefined();
  });
});
