// The checker: invariants checked after every event, at every acknowledgement and role change, and
// once more at the end of a run. Each failure class is reported separately:
//   lost         an acknowledged write (or a committed entry) is missing from a later primary or a final log
//   duplicated   one (clientId, requestId) appears twice in a log, or was acknowledged at two indexes
//   phantom      a write whose every attempt was refused (known not to have happened) is in a log
//   divergence   two servers disagree on a committed entry, or caught-up logs differ once quiet
//   epoch        a server's epoch (promised or along its log) went down
//   split_brain  two servers acknowledged writes, or served as primary, in the same epoch
//   liveness     after the faults stopped, no serving primary with every server caught up and in its config
//   stuck        a client write never finished, a write after recovery failed, or a server still holds a request
//   crash        the core (or a Store assertion it triggered) threw
import type { SimServer } from "./server.js";
import { entryKey, requestKey } from "./storage.js";
import type { OpRecord } from "./workload.js";

export const violationKinds = ["lost", "duplicated", "phantom", "divergence", "epoch", "split_brain", "liveness", "stuck", "crash"] as const;
export type ViolationKind = (typeof violationKinds)[number];
export type Violation = { kind: ViolationKind; at: number; message: string };

type Ack = { index: number; key: string; server: number; epoch: number; at: number };

export class Checker {
  readonly violations: Violation[] = [];
  /** Keys of every entry known committed, index i at position i - 1. */
  private readonly committed: string[] = [];
  /** Per server: its log's first `verified` entries were checked against `committed`. */
  private readonly verified = new Map<number, number>();
  private readonly highestEpoch = new Map<number, number>();
  private readonly acks = new Map<string, Ack>();
  private readonly ackerByEpoch = new Map<number, number>();
  private readonly primaryByEpoch = new Map<number, number>();
  readonly ops: OpRecord[] = [];

  constructor(
    private readonly clock: { readonly now: number },
    private readonly onViolation: (violation: Violation) => void,
  ) {}

  record(kind: ViolationKind, message: string): void {
    // Keep the first few of each class: later ones are usually consequences of the first.
    if (this.violations.filter((violation) => violation.kind === kind).length >= 3) return;
    const violation = { kind, at: this.clock.now, message };
    this.violations.push(violation);
    this.onViolation(violation);
  }

  get committedLength(): number {
    return this.committed.length;
  }

  get ackCount(): number {
    return this.acks.size;
  }

  // ---- after every event -------------------------------------------------------------------

  afterEvent(server: SimServer): void {
    const replica = server.replica;
    if (!replica) return;
    this.checkEpoch(server, replica.epoch);
    this.checkCommittedPrefix(server, replica.committed);
  }

  private checkEpoch(server: SimServer, epoch: number): void {
    const highest = this.highestEpoch.get(server.id) ?? 0;
    if (epoch < highest) this.record("epoch", `server ${server.id} is at epoch ${epoch} after having been at ${highest}`);
    else this.highestEpoch.set(server.id, epoch);
  }

  /**
   * A server's committed entries equal the entries committed at the same indexes. Only a primary's
   * `commit` action extends the committed log (see onCommit); any other server must never believe
   * more is committed than some primary committed.
   */
  private checkCommittedPrefix(server: SimServer, commitIndex: number): void {
    const log = server.storage;
    const upTo = Math.min(commitIndex, log.lastIndex, this.committed.length);
    let verified = Math.min(this.verified.get(server.id) ?? 0, log.lastIndex);
    for (let index = verified + 1; index <= upTo; index += 1) {
      const key = entryKey(log.entry(index)!);
      if (this.committed[index - 1] !== key) {
        this.record("divergence", `server ${server.id} has committed ${key} at ${index}, but ${this.committed[index - 1]} was committed there`);
        break;
      }
      verified = index;
    }
    this.verified.set(server.id, verified);
    if (commitIndex > this.committed.length && commitIndex <= log.lastIndex) {
      this.record("divergence", `server ${server.id} has commit index ${commitIndex}, beyond anything a primary committed (${this.committed.length})`);
    }
  }

  /** A primary's commit action: its log up to `index` is committed, and must extend what was. */
  onCommit(server: SimServer, index: number): void {
    const log = server.storage;
    if (index > log.lastIndex) {
      this.record("lost", `server ${server.id} commits ${index} beyond its log (${log.lastIndex})`);
      return;
    }
    for (let position = 1; position <= index; position += 1) {
      const key = entryKey(log.entry(position)!);
      if (position <= this.committed.length) {
        if (position <= (this.verified.get(server.id) ?? 0)) continue;
        if (this.committed[position - 1] !== key) {
          this.record("divergence", `primary ${server.id} commits ${key} at ${position}, but ${this.committed[position - 1]} was committed there`);
          return;
        }
      } else this.committed.push(key);
    }
    this.verified.set(server.id, Math.max(this.verified.get(server.id) ?? 0, index));
  }

  onTruncate(server: SimServer, afterIndex: number): void {
    this.verified.set(server.id, Math.min(this.verified.get(server.id) ?? 0, afterIndex));
  }

  onRestart(server: SimServer): void {
    this.verified.set(server.id, Math.min(this.verified.get(server.id) ?? 0, server.storage.lastIndex));
    this.afterEvent(server);
  }

  onPromise(server: SimServer, epoch: number): void {
    if (epoch < server.storage.promisedEpoch) this.record("epoch", `server ${server.id} promises epoch ${epoch} below its durable promise ${server.storage.promisedEpoch}`);
  }

  // ---- acknowledgements and primaries -----------------------------------------------------------

  onAck(server: SimServer, clientId: string, requestId: number, index: number): void {
    const epoch = server.core.epoch;
    const request = requestKey(clientId, requestId);
    const entry = server.storage.entry(index);
    if (!entry || entry.clientId !== clientId || entry.requestId !== requestId) {
      this.record("lost", `server ${server.id} acknowledged ${request} at ${index}, but its log holds ${entry ? entryKey(entry) : "nothing"} there`);
      return;
    }
    if (index > server.core.committed) this.record("lost", `server ${server.id} acknowledged ${request} at ${index} above its commit index ${server.core.committed}`);
    const key = entryKey(entry);
    const previous = this.acks.get(request);
    if (previous && previous.index !== index) {
      this.record("duplicated", `${request} acknowledged at ${previous.index} by server ${previous.server} and at ${index} by server ${server.id}`);
    }
    if (!previous) this.acks.set(request, { index, key, server: server.id, epoch, at: this.clock.now });
    const acker = this.ackerByEpoch.get(epoch);
    if (acker !== undefined && acker !== server.id) this.record("split_brain", `servers ${acker} and ${server.id} both acknowledged writes in epoch ${epoch}`);
    else this.ackerByEpoch.set(epoch, server.id);
  }

  /** A server became a serving primary: one per epoch, and its log holds everything committed. */
  onServing(server: SimServer): void {
    const epoch = server.core.epoch;
    const other = this.primaryByEpoch.get(epoch);
    if (other !== undefined && other !== server.id) this.record("split_brain", `servers ${other} and ${server.id} both became serving primary in epoch ${epoch}`);
    else this.primaryByEpoch.set(epoch, server.id);
    const log = server.storage;
    for (let index = 1; index <= this.committed.length; index += 1) {
      const entry = log.entry(index);
      const key = entry ? entryKey(entry) : undefined;
      if (key !== this.committed[index - 1]) {
        this.record("lost", `server ${server.id} became primary of epoch ${epoch} without committed entry ${this.committed[index - 1]} (has ${key ?? "nothing"} at ${index})`);
        return;
      }
    }
  }

  // ---- client history -------------------------------------------------------------------------

  invoked(op: OpRecord): void {
    this.ops.push(op);
  }

  // ---- at the end of a run ----------------------------------------------------------------------

  /**
   * Caught-up logs are identical; every acknowledged write is in them once; refused writes are not.
   * `caughtUp` is every server when the cluster converged, else the serving primary and its in-sync
   * backups (a server that never caught up is a liveness failure, reported on its own).
   */
  final(servers: SimServer[], caughtUp: SimServer[], livenessAt: number | null): void {
    this.finalLogs(caughtUp);
    this.finalClients(servers, livenessAt);
  }

  private finalLogs(servers: SimServer[]): void {
    if (servers.length === 0) return;
    const reference = servers[0];
    const referenceKeys = reference.storage.all().map(entryKey);
    for (const server of servers.slice(1)) {
      const keys = server.storage.all().map(entryKey);
      const length = Math.min(keys.length, referenceKeys.length);
      let first = -1;
      for (let index = 0; index < length; index += 1) {
        if (keys[index] !== referenceKeys[index]) {
          first = index;
          break;
        }
      }
      if (first >= 0 || keys.length !== referenceKeys.length) {
        const where = first >= 0 ? `first difference at ${first + 1}: ${referenceKeys[first]} vs ${keys[first]}` : `lengths ${referenceKeys.length} vs ${keys.length}`;
        this.record("divergence", `final logs of servers ${reference.id} and ${server.id} differ (${where})`);
      }
    }
    for (const server of servers) {
      const seen = new Map<string, number>();
      for (const entry of server.storage.all()) {
        if (entry.clientId === null || entry.requestId === null) continue;
        const request = requestKey(entry.clientId, entry.requestId);
        const previous = seen.get(request);
        if (previous !== undefined) this.record("duplicated", `final log of server ${server.id} holds ${request} at ${previous} and ${entry.index}`);
        seen.set(request, entry.index);
      }
      for (const [request, ack] of this.acks) {
        const entry = server.storage.entry(ack.index);
        if (!entry || entryKey(entry) !== ack.key) {
          this.record("lost", `${request}, acknowledged by server ${ack.server} at ${ack.index} (epoch ${ack.epoch}, t=${ack.at}), is missing from the final log of server ${server.id}`);
        }
      }
      for (const op of this.ops) {
        if (op.outcome !== "fail") continue;
        const index = server.storage.dedupLookup(op.clientId, op.requestId);
        if (index !== undefined) this.record("phantom", `${op.clientId}#${op.requestId} was refused on every attempt but is at ${index} in server ${server.id}'s log`);
      }
    }
  }

  private finalClients(servers: SimServer[], livenessAt: number | null): void {
    for (const op of this.ops) {
      if (op.outcome === null) this.record("stuck", `${op.clientId}#${op.requestId}, invoked at ${op.invokeAt}, never finished`);
      else if (livenessAt !== null && op.invokeAt >= livenessAt && op.outcome !== "ok") {
        this.record("stuck", `${op.clientId}#${op.requestId}, invoked at ${op.invokeAt} after recovery (${livenessAt}), ended ${op.outcome}`);
      }
    }
    for (const server of servers) {
      if (server.heldRequests() > 0) this.record("stuck", `server ${server.id} still holds ${server.heldRequests()} client requests once quiet`);
    }
  }
}
