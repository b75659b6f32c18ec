// ConnectionManager: the I/O shell around the replication core (core/replica.ts).
// It owns the peer links, the tick timer and the Store, feeds the core events and carries out its
// actions. Client requests arrive from server.ts as writes (group-committed, replicated, answered on
// commit) and reads (answered once everything applied before them is committed, under a lease).
import type { Logger } from "pino";
import { Replica, type Action, type LogView } from "../core/replica.js";
import type { PeerMessage } from "../core/messages.js";
import { sameRequest, type Command, type ConfigCommand, type Effect, type LogEntry } from "../store/commands.js";
import { requestKey, type Store } from "../store/store.js";
import { monotonicMs } from "../utils.js";
import {
  catchUpQuietMs,
  defaultChannels,
  freezeDetectMs,
  groupCommitRequestsMax,
  syncOffLoopBatchMin,
  transactionLogBytesMax,
  heartbeatIntervalMs,
  leaseMs,
  logCacheEntriesMax,
  peerTimeoutMs,
  replicationBatchEntriesMax,
  replicationInflightEntriesMax,
  takeoverWaitMs,
  tickIntervalMs,
  unreachableGraceMs,
  type ClusterConfig,
  type Machine,
} from "./consts.js";
import { ChatError, errorCodes } from "./errors.js";
import { PeerLinks } from "./peer.js";
import type { ServerStatus } from "./schema.js";

export type WriteOutcome = { ok: true; index: number; data: Record<string, unknown> } | { ok: false; code: string; message: string };

export type ManagerEvents = {
  /** Entries this server proposed are committed: push their events. */
  onCommitted: (committed: { index: number; effects: Effect[] }[]) => void;
  /** This server stopped being a serving primary (stepped down or was frozen): drop its clients. */
  onLostPrimacy: (reason: string) => void;
};

type PendingWrite = { index: number; data: Record<string, unknown>; effects: Effect[]; resolve: (outcome: WriteOutcome) => void };
type QueuedWrite = { clientId: string | null; requestId: number | null; command: Command; resolve: (outcome: WriteOutcome) => void };
type PendingRead = { index: number; resolve: () => void; reject: (error: ChatError) => void };

/** LogView over the Store with a cache of recent entries, so replication rarely re-reads SQLite. */
class CachedLog implements LogView {
  private readonly cache = new Map<number, LogEntry>();
  constructor(private readonly store: Store) {}
  get lastIndex() {
    return this.store.lastIndex;
  }
  get lastEpoch() {
    return this.store.lastEpoch;
  }
  remember(entries: LogEntry[]): void {
    for (const entry of entries) this.cache.set(entry.index, entry);
    // Live backups ack within a few batches; a follower further behind is catching up from SQLite.
    const oldest = this.store.lastIndex - logCacheEntriesMax;
    if (this.cache.size <= logCacheEntriesMax) return;
    // Keys are in insertion order, which is index order: the oldest come first.
    for (const index of this.cache.keys()) {
      if (index >= oldest) break;
      this.cache.delete(index);
    }
  }
  forget(): void {
    this.cache.clear();
    this.lastRange = undefined;
  }
  epochAt(index: number): number {
    return this.cache.get(index)?.epoch ?? this.store.epochAt(index);
  }
  private lastRange: { from: number; to: number; entries: LogEntry[] } | undefined;
  entries(from: number, to: number): LogEntry[] {
    // The primary asks for the same range once per backup; hand out one array so it is serialized once.
    if (this.lastRange && this.lastRange.from === from && this.lastRange.to === to) return this.lastRange.entries;
    const entries = this.readEntries(from, to);
    this.lastRange = { from, to, entries };
    return entries;
  }
  private readEntries(from: number, to: number): LogEntry[] {
    const result: LogEntry[] = [];
    for (let index = from; index <= to; index += 1) {
      const entry = this.cache.get(index);
      if (!entry) return this.store.entries(from, to);
      result.push(entry);
    }
    return result;
  }
  lastIndexAtOrBeforeEpoch(epoch: number): number {
    return this.store.lastIndexAtOrBeforeEpoch(epoch);
  }
  lastConfig() {
    return this.store.lastConfig();
  }
}

export class ConnectionManager {
  readonly core: Replica;
  private readonly links: PeerLinks;
  private readonly log: CachedLog;
  private readonly logger: Logger;
  private ticker: NodeJS.Timeout | undefined;
  private queue: QueuedWrite[] = [];
  /** The same queue by (clientId, requestId), so a retry that arrives while its first copy waits shares its answer. */
  private readonly queuedByKey = new Map<string, QueuedWrite>();
  private flushScheduled = false;
  private pendingWrites: PendingWrite[] = [];
  private pendingReads: PendingRead[] = [];
  private readonly waitingDedup: { index: number; data: Record<string, unknown>; resolve: (outcome: WriteOutcome) => void }[] = [];
  private stopped = false;
  private wasServing = false;
  /** A chunk of logged-but-unapplied entries is scheduled to be applied. */
  private applyScheduled = false;
  /** When the last catch-up batch was logged: applying waits while they keep coming. */
  private lastCatchUpAt = -Infinity;
  /** When the first entry that still waits was logged (for the log line). */
  private backlogStartedAt: number | null = null;
  /** Proposals (a takeover's config, the bootstrap) made while the state was behind the log. */
  private deferredProposals: { epoch: number; batch: QueuedWrite[] }[] = [];
  /** Batches committed without an fsync whose sync on the thread pool has not finished. */
  private syncsInFlight = 0;
  /** Bumped by a truncation: a sync that started before it says nothing about the entries after it. */
  private logGeneration = 0;
  /**
   * The messages of one socket read from a peer are being handled. Appends logged meanwhile are
   * committed without an fsync, and everything this server sends waits in heldSends until one fsync
   * at the end of the read (endPeerRead): k appends that queued behind a commit cost one fsync, not k,
   * and no ack, vote or other message leaves before the log it speaks for is durable.
   */
  private inPeerRead = false;
  /**
   * Bytes the entries applied in this peer read logged. Its appends share one transactionLogBytesMax
   * budget: one 64 KB read can hold many appends of small commands that are costly to apply (a
   * read_undelivered of 500 long messages), and the rest are logged now and applied in later turns.
   */
  private peerReadAppliedBytes = 0;
  /** Log entries are committed without an fsync; sends are held until syncHeldLog. */
  private logUnsynced = false;
  private heldSends: { to: number; message: PeerMessage }[] = [];

  constructor(
    readonly self: Machine,
    readonly cluster: ClusterConfig,
    readonly store: Store,
    private readonly events: ManagerEvents,
    serverLogger: Logger,
  ) {
    // Sibling child loggers: a child of a child would repeat the "component" key in every line.
    this.logger = serverLogger.child({ component: "manager" });
    this.log = new CachedLog(store);
    const order = cluster.machines.map((machine) => machine.id);
    this.core = new Replica({
      id: self.id,
      order,
      initialMembers: cluster.initialMembers ?? order,
      log: this.log,
      promisedEpoch: Number(store.getMeta("promised_epoch") ?? "0"),
      timing: {
        heartbeatIntervalMs,
        peerTimeoutMs,
        freezeDetectMs,
        leaseMs,
        takeoverWaitMs,
        unreachableGraceMs,
        batchEntriesMax: replicationBatchEntriesMax,
        inflightEntriesMax: replicationInflightEntriesMax,
      },
      random: Math.random,
      now: monotonicMs(),
    });
    this.links = new PeerLinks(self, cluster.machines, cluster.clusterSecret, {
      onUp: (peer) => this.execute(this.core.onPeerUp(peer, monotonicMs())),
      onDown: (peer) => this.execute(this.core.onPeerDown(peer, monotonicMs())),
      onRefused: (peer) => this.execute(this.core.onPeerRefused(peer, monotonicMs())),
      onMessage: (peer, message) => {
        this.inPeerRead = true;
        this.execute(this.core.onMessage(peer, message, monotonicMs()));
      },
      onReadDone: () => this.endPeerRead(),
    }, serverLogger.child({ component: "peer" }));
  }

  async start(): Promise<void> {
    await this.links.listen();
    this.ticker = setInterval(() => {
      this.execute(this.core.tick(monotonicMs()));
      this.releaseReads();
    }, tickIntervalMs);
    this.execute(this.core.tick(monotonicMs()));
    // A server stopped while entries waited to be applied applies them now.
    this.scheduleApply();
  }

  stop(): void {
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    this.links.close();
  }

  status(): ServerStatus {
    const role = this.core.currentRole;
    return {
      serverId: this.self.id,
      role: role === "primary" && this.core.canAcceptWrites() ? "primary" : role === "backup" ? "backup" : "recovering",
      epoch: this.core.epoch,
      primaryId: this.core.knownPrimary(),
      commitIndex: this.core.committed,
      lastIndex: this.store.lastIndex,
      appliedIndex: this.store.appliedIndex,
      members: this.core.status().members,
    };
  }

  /** The primary this server knows, for NOT_PRIMARY hints. */
  primaryHint(): { id: number; host: string; clientPort: number } | undefined {
    const id = this.core.knownPrimary();
    const machine = this.cluster.machines.find((candidate) => candidate.id === id);
    return machine ? { id: machine.id, host: machine.host, clientPort: machine.clientPort } : undefined;
  }

  canAcceptWrites(): boolean {
    this.execute(this.core.observe(monotonicMs()));
    return this.core.canAcceptWrites();
  }

  /**
   * Proposes a write. Resolves once it is committed (on every in-sync server, fsynced) with the
   * response, or at once with an error that changed nothing. A retry of a request already in the
   * log resolves with the original response.
   */
  submitWrite(clientId: string | null, requestId: number | null, command: Command): Promise<WriteOutcome> {
    if (!this.canAcceptWrites()) return Promise.resolve(this.notPrimary());
    if (clientId !== null && requestId !== null) {
      const previous = this.store.dedupLookup(clientId, requestId);
      if (previous && !sameRequest(previous.command, command)) {
        return Promise.resolve({ ok: false, code: errorCodes.BAD_REQUEST, message: `request id ${requestId} was already used by this client for a different request` });
      }
      if (previous) {
        if (previous.logIndex <= this.core.committed) return Promise.resolve({ ok: true, index: previous.logIndex, data: previous.data });
        return new Promise((resolve) => this.waitingDedup.push({ index: previous.logIndex, data: previous.data, resolve }));
      }
      const queued = this.queuedByKey.get(requestKey(clientId, requestId));
      if (queued && !sameRequest(queued.command, command)) {
        return Promise.resolve({ ok: false, code: errorCodes.BAD_REQUEST, message: `request id ${requestId} is in use by this client for a different request` });
      }
      if (queued) {
        return new Promise((resolve) => {
          const first = queued.resolve;
          queued.resolve = (outcome) => {
            first(outcome);
            resolve(outcome);
          };
        });
      }
    }
    return new Promise((resolve) => {
      const item = { clientId, requestId, command, resolve };
      this.queue.push(item);
      if (clientId !== null && requestId !== null) this.queuedByKey.set(requestKey(clientId, requestId), item);
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Resolves when every entry applied so far is committed and this server holds the read lease. */
  readBarrier(): Promise<void> {
    if (!this.core.canServeReads(monotonicMs())) {
      if (!this.canAcceptWrites()) return Promise.reject(this.notPrimaryError());
    }
    const index = this.store.lastIndex;
    if (index <= this.core.committed && this.core.canServeReads(monotonicMs())) return Promise.resolve();
    return new Promise((resolve, reject) => this.pendingReads.push({ index, resolve, reject }));
  }

  /** Reads of what is committed can be answered now, without waiting (see readBarrier). */
  canServeReadsNow(): boolean {
    return this.core.canServeReads(monotonicMs());
  }

  private notPrimary(): WriteOutcome {
    return { ok: false, code: errorCodes.NOT_PRIMARY, message: `server ${this.self.id} is not the primary` };
  }

  private notPrimaryError(): ChatError {
    return new ChatError(errorCodes.NOT_PRIMARY, `server ${this.self.id} is not the primary`);
  }

  // ---- group commit --------------------------------------------------------

  private flush(): void {
    this.flushScheduled = false;
    if (this.queue.length === 0 || this.stopped) return;
    if (!this.canAcceptWrites()) {
      this.queuedByKey.clear();
      for (const item of this.queue.splice(0)) item.resolve(this.notPrimary());
      return;
    }
    const batch = this.queue.splice(0, groupCommitRequestsMax);
    for (const item of batch) if (item.clientId !== null && item.requestId !== null) this.queuedByKey.delete(requestKey(item.clientId, item.requestId));
    if (this.queue.length > 0) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
    const rest = this.propose(batch);
    if (rest.length > 0) this.requeue(rest);
  }

  /**
   * Writes a batch had no room for (the transaction logged transactionLogBytesMax bytes) go first
   * in the next batch, a turn later, so no turn holds more than that much work.
   */
  private requeue(items: QueuedWrite[]): void {
    this.queue.unshift(...items);
    for (const item of items) if (item.clientId !== null && item.requestId !== null) this.queuedByKey.set(requestKey(item.clientId, item.requestId), item);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /**
   * Proposes a batch, or defers it while logged entries wait to be applied. Returns the writes the
   * transaction had no room for (transactionLogBytesMax), for the caller to propose next, in order.
   */
  private propose(batch: QueuedWrite[]): QueuedWrite[] {
    if (this.store.pendingApply > 0) {
      // Only a server that just took over can be here (a serving primary has applied everything):
      // its config entry waits until the state it will be checked against is complete. The core
      // proposes no other config until that entry is in the log (Replica.primaryTick); should one
      // come anyway, only the newest config is worth proposing.
      const isConfig = (queued: QueuedWrite[]) => queued.length === 1 && queued[0].command.op === "config";
      if (this.deferredProposals.length === 0) this.logger.info({ pendingApply: this.store.pendingApply }, "proposal waits for the logged entries to be applied");
      if (isConfig(batch)) this.deferredProposals = this.deferredProposals.filter((deferred) => !isConfig(deferred.batch));
      this.deferredProposals.push({ epoch: this.core.epoch, batch });
      this.scheduleApply();
      return [];
    }
    const syncLater = batch.length >= syncOffLoopBatchMin && this.store.durability === "full";
    const proposals = this.store.proposeBatch(
      this.core.epoch,
      batch.map((item) => ({ clientId: item.clientId, requestId: item.requestId, command: item.command })),
      (entries) => {
        // Ship to the backups while our own fsync runs: the commit below is what makes us durable.
        this.log.remember(entries);
        this.execute(this.core.onLocalProposed(entries, monotonicMs()));
      },
      { syncLater },
    );
    for (const [position, proposal] of proposals.entries()) {
      const item = batch[position];
      if (!proposal.result.ok) item.resolve({ ok: false, code: proposal.result.code, message: proposal.result.message });
      else this.pendingWrites.push({ index: proposal.entry.index, data: proposal.result.data, effects: proposal.result.effects, resolve: item.resolve });
    }
    const rest = batch.slice(proposals.length);
    if (!syncLater) {
      this.execute(this.core.onLocalPersisted(this.store.lastIndex, monotonicMs()));
      return rest;
    }
    // Off the event loop: the next requests and the backups' acks are handled while it runs.
    const index = this.store.lastIndex;
    const generation = this.logGeneration;
    this.syncsInFlight += 1;
    this.store.syncLog((error) => {
      this.syncsInFlight -= 1;
      if (this.stopped) return;
      // A failed fsync leaves the file's state unknown (it cannot be retried): stop, as for a crash.
      if (error) throw error;
      if (generation !== this.logGeneration) return;
      this.execute(this.core.onLocalPersisted(index, monotonicMs()));
    });
    return rest;
  }

  // ---- carrying out the core's actions ---------------------------------------

  private execute(actions: Action[]): void {
    // A role change (a takeover counts the whole log as its own, a deposed primary reports its log to
    // the next one) or a freeze sees the log as durable: finish any sync still on the thread pool first.
    if (this.syncsInFlight > 0 && actions.some((action) => action.type === "role" || action.type === "frozen")) {
      this.syncLogOrStop();
      this.logger.info({ syncsInFlight: this.syncsInFlight }, "finished the log syncs still running before a role change");
    }
    // The same for the appends of this peer read, and before a truncation rewrites what they logged.
    if (this.logUnsynced && actions.some((action) => action.type === "role" || action.type === "frozen" || action.type === "truncate")) this.syncHeldLog();
    for (const action of actions) {
      switch (action.type) {
        case "send":
          if (this.logUnsynced) this.heldSends.push({ to: action.to, message: action.message as PeerMessage });
          else this.links.send(action.to, action.message as PeerMessage);
          break;
        case "persist": {
          this.store.noteCommitted(this.core.committed);
          // Entries the primary has already committed (a catch-up) are logged now and applied once
          // the catch-up is over: the log is what the in-sync set needs, and it takes a third of the work.
          const deferApply = action.entries.length > 0 && action.entries[action.entries.length - 1].index <= this.core.committed;
          if (deferApply) this.lastCatchUpAt = monotonicMs();
          const syncLater = this.inPeerRead && this.store.durability === "full";
          const applyBytesMax = this.inPeerRead ? transactionLogBytesMax - this.peerReadAppliedBytes : undefined;
          const applied = this.store.appendEntries(action.entries, { deferApply, syncLater, applyBytesMax });
          if (this.inPeerRead) this.peerReadAppliedBytes += applied;
          if (syncLater) this.logUnsynced = true;
          this.log.remember(action.entries);
          this.execute(this.core.onPersisted(this.store.lastIndex, monotonicMs()));
          this.scheduleApply();
          break;
        }
        case "truncate": {
          this.logGeneration += 1;
          const lastIndex = this.store.lastIndex;
          this.log.forget();
          const how = this.store.truncateAfter(action.afterIndex);
          this.logger.warn({ afterIndex: action.afterIndex, lastIndex, how }, "truncated unacknowledged log suffix");
          this.scheduleApply();
          break;
        }
        case "promise":
          this.store.putMeta("promised_epoch", String(action.epoch));
          break;
        case "propose_config":
          this.proposeConfig(action.config, action.reason);
          break;
        case "commit":
          this.store.noteCommitted(action.index);
          this.onCommit(action.index);
          break;
        case "role":
          this.logger.info({ role: action.role, epoch: action.epoch, serving: action.serving, reason: action.reason }, "role change");
          if (action.role === "primary" && action.serving && !this.store.hasBootstrap()) {
            this.propose([{ clientId: null, requestId: null, command: { op: "bootstrap", channels: [...defaultChannels] }, resolve: () => {} }]);
          }
          if (action.role === "primary" && action.serving) this.wasServing = true;
          else if (this.wasServing) this.loseClients(action.reason);
          break;
        case "frozen":
          this.logger.warn({ gapMs: action.gapMs }, "event loop was frozen; treating this server as restarted");
          this.loseClients(`frozen for ${action.gapMs} ms`);
          break;
      }
    }
  }

  /** The end of a peer read: one fsync for the appends it logged, then what it held back goes out. */
  private endPeerRead(): void {
    this.inPeerRead = false;
    this.peerReadAppliedBytes = 0;
    if (this.logUnsynced && !this.stopped) this.syncHeldLog();
  }

  private syncHeldLog(): void {
    this.syncLogOrStop();
    this.logUnsynced = false;
    for (const { to, message } of this.heldSends.splice(0)) this.links.send(to, message);
  }

  /**
   * A failed fsync leaves the file's state unknown (it cannot be retried): the process stops at once,
   * as for a crash. Thrown instead, it could reach a caller that answers it as one failed request
   * (a client frame that asked whether this server is primary) while the server went on.
   */
  private syncLogOrStop(): void {
    try {
      this.store.syncLogNow();
    } catch (error) {
      this.logger.fatal({ err: error }, "fsync of the log failed; stopping");
      process.exit(1);
    }
  }

  // ---- applying logged entries ---------------------------------------------

  /** Applies logged entries a chunk per turn of the event loop, after the catch-up batches stop coming. */
  private scheduleApply(): void {
    if (this.applyScheduled || this.stopped || (this.store.pendingApply === 0 && this.deferredProposals.length === 0)) return;
    this.applyScheduled = true;
    this.backlogStartedAt ??= monotonicMs();
    const quietFor = monotonicMs() - this.lastCatchUpAt;
    if (quietFor < catchUpQuietMs && this.deferredProposals.length === 0) setTimeout(() => this.applySome(), catchUpQuietMs - quietFor);
    else setImmediate(() => this.applySome());
  }

  private applySome(): void {
    this.applyScheduled = false;
    if (this.stopped) return;
    if (monotonicMs() - this.lastCatchUpAt < catchUpQuietMs && this.deferredProposals.length === 0) {
      this.scheduleApply();
      return;
    }
    const pending = this.store.pendingApply;
    const remaining = this.store.applyPending(replicationBatchEntriesMax);
    if (remaining > 0) {
      this.scheduleApply();
      return;
    }
    if (pending > 0) {
      this.logger.info({ appliedIndex: this.store.appliedIndex, sinceFirstLoggedMs: Math.round(monotonicMs() - (this.backlogStartedAt ?? monotonicMs())) }, "applied the logged entries");
    }
    this.backlogStartedAt = null;
    const deferred = this.deferredProposals.splice(0);
    for (const [position, { epoch, batch }] of deferred.entries()) {
      // A proposal of an epoch this server no longer leads is dropped: its writes changed nothing.
      if (this.core.currentRole !== "primary" || this.core.epoch !== epoch) {
        for (const item of batch) item.resolve(this.notPrimary());
        continue;
      }
      const rest = this.propose(batch);
      if (rest.length > 0) {
        // One transaction's work per turn: the rest, and the batches deferred after it, next turn.
        this.deferredProposals.unshift({ epoch, batch: rest }, ...deferred.slice(position + 1));
        this.scheduleApply();
        return;
      }
    }
  }

  private proposeConfig(config: ConfigCommand, reason: string): void {
    this.logger.info({ epoch: this.core.epoch, members: config.members, reason }, "proposing config");
    this.propose([{ clientId: null, requestId: null, command: config, resolve: () => {} }]);
  }

  private onCommit(index: number): void {
    const committed: { index: number; effects: Effect[] }[] = [];
    let done = 0;
    for (const pending of this.pendingWrites) {
      if (pending.index > index) break;
      done += 1;
      committed.push({ index: pending.index, effects: pending.effects });
      pending.resolve({ ok: true, index: pending.index, data: pending.data });
    }
    this.pendingWrites.splice(0, done);
    for (let position = this.waitingDedup.length - 1; position >= 0; position -= 1) {
      const waiting = this.waitingDedup[position];
      if (waiting.index <= index) {
        this.waitingDedup.splice(position, 1);
        waiting.resolve({ ok: true, index: waiting.index, data: waiting.data });
      }
    }
    if (committed.length > 0) this.events.onCommitted(committed);
    this.releaseReads();
  }

  private releaseReads(): void {
    if (this.pendingReads.length === 0) return;
    if (!this.core.canServeReads(monotonicMs())) return;
    const ready = this.pendingReads.filter((read) => read.index <= this.core.committed);
    this.pendingReads = this.pendingReads.filter((read) => read.index > this.core.committed);
    for (const read of ready) read.resolve();
  }

  /** Stepped down or frozen: nothing pending may be answered any more; clients retry elsewhere. */
  private loseClients(reason: string): void {
    this.wasServing = false;
    // Close the client connections first: a write whose outcome is unknown must get no answer at all,
    // so its client retries it (same request id) on the new primary.
    this.events.onLostPrimacy(reason);
    const unknown = [...this.pendingWrites.splice(0), ...this.waitingDedup.splice(0)];
    for (const write of unknown) write.resolve({ ok: false, code: errorCodes.UNAVAILABLE, message: "primary lost before commit; outcome unknown" });
    for (const read of this.pendingReads.splice(0)) read.reject(this.notPrimaryError());
    this.queuedByKey.clear();
    for (const item of this.queue.splice(0)) item.resolve(this.notPrimary());
    if (unknown.length > 0) this.logger.warn({ dropped: unknown.length, reason }, "dropped writes with unknown outcome");
  }
}
