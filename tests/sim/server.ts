// One simulated server: the fake storage, the Replica under test, and a shell that carries out the
// core's actions exactly as connections/manager.ts does (same order rules, same write path, same
// dedup rules, same reaction to losing primacy). Process faults live here too: crash (kill -9),
// restart from durable storage, and freeze (no events at all, then everything at once, late).
import { Replica, type Action, type Timing } from "../../core/replica.js";
import type { PeerMessage } from "../../core/messages.js";
import type { Command, ConfigCommand, LogEntry } from "../../store/commands.js";
import { Rng } from "./rng.js";
import { SimStorage, type StorageViolation } from "./storage.js";
import { formatAction } from "./trace.js";

/** One try of a client write, as it travels to a server and back. */
export type Attempt = {
  clientIndex: number;
  clientId: string;
  requestId: number;
  number: number;
  server: number;
  /** The server's client-connection generation when the attempt was sent; a dropped connection bumps it. */
  connection: number;
};

export type ClientOutcome = { kind: "ok"; index: number } | { kind: "not_primary" };

/** What the server needs from the rest of the simulation. */
export interface World {
  readonly now: number;
  readonly timing: Timing;
  readonly order: number[];
  readonly groupCommitMax: number;
  readonly tickIntervalMs: number;
  /** Runs a server event: traces it, catches crashes and assertion failures, runs the per-event checks. */
  runEvent(server: SimServer, label: string, run: () => void): void;
  at(time: number, run: () => void): void;
  trace(text: string): void;
  /** Whether an armed crash may strike now (fault phase, and the fault model allows one more down). */
  mayCrash(server: SimServer): boolean;
  send(from: number, to: number, message: PeerMessage): void;
  /** The server closed every client connection of generation `connection` (or older). */
  dropClientConnections(server: number, connection: number): void;
  respond(attempt: Attempt, outcome: ClientOutcome): void;
  onAck(server: SimServer, clientId: string, requestId: number, index: number): void;
  onServing(server: SimServer): void;
  /** A `commit` action (a primary's commit index advanced). */
  onCommit(server: SimServer, index: number): void;
  onTruncate(server: SimServer, afterIndex: number): void;
  onPromise(server: SimServer, epoch: number): void;
  onStorageViolation(server: SimServer, violation: StorageViolation): void;
  /** A planted bug or test hook may wrap each new Replica. */
  decorate(server: SimServer, replica: Replica): void;
  readonly shellBugs: ReadonlySet<ShellBug>;
}

/** Shell mistakes the tests plant to show the checker notices them. */
export type ShellBug = "ack-on-propose" | "backup-persist-volatile" | "promise-volatile";

/** Thrown to kill the server in the middle of an event (kill -9 at an armed point). */
export class SimCrash extends Error {}

type Queued = { clientId: string; requestId: number; attempts: Attempt[] };
type Pending = { index: number; clientId: string; requestId: number; attempts: Attempt[] };

export type ArmedCrash = { kind: "fsync" } | { kind: "actions"; remaining: number };

export class SimServer {
  readonly storage: SimStorage;
  replica: Replica | null = null;
  incarnation = 0;
  frozen = false;
  freezeToken = 0;
  frozenSince = 0;
  armed: ArmedCrash | null = null;
  /** PeerLinks.links: peer -> generation of the registered connection. */
  readonly links = new Map<number, number>();
  /** The client-connection generation (bumped when the server drops its clients or crashes). */
  connection = 0;

  private deferred: { label: string; run: () => void }[] = [];
  private pendingTick = false;

  // manager.ts state
  private queue: Queued[] = [];
  private flushScheduled = false;
  private pendingWrites: Pending[] = [];
  private waitingDedup: Pending[] = [];
  private wasServing = false;
  /**
   * A config the shell holds back: the real manager proposes nothing while its state is behind its
   * log (a takeover right after a catch-up applies the backlog first), and only its newest config.
   */
  private heldConfig: { epoch: number; config: Command } | null = null;

  constructor(
    readonly id: number,
    private readonly world: World,
    private readonly rng: Rng,
  ) {
    this.storage = new SimStorage((violation) => world.onStorageViolation(this, violation));
  }

  get up(): boolean {
    return this.replica !== null;
  }

  /** Requests this server holds without an answer (for the stuck check). */
  heldRequests(): number {
    return this.queue.length + this.pendingWrites.length + this.waitingDedup.length;
  }

  // ---- process lifecycle -------------------------------------------------------------------

  /** Starts (or restarts) the process from its durable storage. */
  start(): void {
    if (this.replica) throw new Error(`server ${this.id} is already running`);
    this.incarnation += 1;
    this.frozen = false;
    this.deferred = [];
    this.pendingTick = false;
    this.links.clear();
    this.resetShell();
    const replica = new Replica({
      id: this.id,
      order: this.world.order,
      initialMembers: this.world.order,
      log: this.storage,
      promisedEpoch: this.storage.promisedEpoch,
      timing: this.world.timing,
      random: this.rng.fork(this.incarnation).next,
      now: this.world.now,
    });
    this.world.decorate(this, replica);
    this.replica = replica;
    this.world.trace(`${this.id} start #${this.incarnation} log ${this.storage.lastIndex}/${this.storage.lastEpoch} promised e${this.storage.promisedEpoch}`);
    // manager.start(): one tick at once, then every tickIntervalMs.
    const incarnation = this.incarnation;
    this.handle("tick", () => this.execute(this.core.tick(this.world.now)));
    this.scheduleTick(incarnation, this.world.now + 1 + this.rng.int(0, this.world.tickIntervalMs - 1));
  }

  /** kill -9: in-memory state and everything not yet durable are gone. */
  crash(reason: string): void {
    if (!this.replica) return;
    const lost = this.storage.crash();
    this.world.trace(`${this.id} CRASH (${reason})${lost > 0 ? `, ${lost} unsynced entries lost` : ""}`);
    this.replica = null;
    this.frozen = false;
    this.deferred = [];
    this.armed = null;
    this.links.clear();
    const connection = this.connection;
    this.connection += 1;
    this.resetShell();
    this.world.dropClientConnections(this.id, connection);
  }

  freeze(): void {
    if (!this.replica || this.frozen) return;
    this.frozen = true;
    this.freezeToken += 1;
    this.frozenSince = this.world.now;
    this.world.trace(`${this.id} FREEZE`);
  }

  /** Resumes a frozen process: the timer and everything that arrived meanwhile run now, late. */
  unfreeze(): void {
    if (!this.replica || !this.frozen) return;
    this.frozen = false;
    this.world.trace(`${this.id} RESUME after ${this.world.now - this.frozenSince}ms`);
    const deferred = this.deferred;
    this.deferred = [];
    const tickFirst = this.rng.chance(0.5);
    const tick = this.pendingTick;
    this.pendingTick = false;
    if (tick && tickFirst) this.handle("tick (late)", () => this.execute(this.core.tick(this.world.now)));
    for (const event of deferred) this.handle(`${event.label} (late)`, event.run);
    if (tick && !tickFirst) this.handle("tick (late)", () => this.execute(this.core.tick(this.world.now)));
  }

  /** Every event enters here: dropped when down, held while frozen. */
  handle(label: string, run: () => void): void {
    if (!this.replica) return;
    if (this.frozen) {
      this.deferred.push({ label, run });
      return;
    }
    this.world.runEvent(this, label, run);
  }

  get core(): Replica {
    if (!this.replica) throw new Error(`server ${this.id} is down`);
    return this.replica;
  }

  private scheduleTick(incarnation: number, at: number): void {
    this.world.at(at, () => {
      if (this.incarnation !== incarnation || !this.replica) return;
      if (this.frozen) this.pendingTick = true;
      else this.handle("tick", () => this.execute(this.core.tick(this.world.now)));
      const jitter = this.rng.chance(0.05) ? this.rng.int(1, 3) : 0;
      this.scheduleTick(incarnation, at + this.world.tickIntervalMs + jitter);
    });
  }

  /** As a new primary applying a catch-up backlog does: its takeover config is proposed `delayMs` later. */
  private holdConfig(config: Command, delayMs: number): void {
    this.heldConfig = { epoch: this.core.epoch, config };
    this.world.trace(`${this.id} takeover config held for ${delayMs}ms (state behind the log)`);
    const incarnation = this.incarnation;
    this.world.at(this.world.now + delayMs, () => {
      if (this.incarnation !== incarnation) return;
      this.handle("held config", () => {
        const held = this.heldConfig;
        this.heldConfig = null;
        if (!held) return;
        // A proposal of an epoch this server no longer leads is dropped.
        if (this.core.currentRole === "primary" && this.core.epoch === held.epoch) this.propose([{ clientId: null, requestId: null, command: held.config, attempts: [] }]);
      });
    });
  }

  private resetShell(): void {
    this.heldConfig = null;
    this.queue = [];
    this.flushScheduled = false;
    this.pendingWrites = [];
    this.waitingDedup = [];
    this.wasServing = false;
  }

  // ---- peer links (peer.ts) ------------------------------------------------------------------

  linkUp(peer: number, generation: number): void {
    const existing = this.links.get(peer);
    if (existing !== undefined) {
      // The peer restarted and dialed again: the new link replaces the old one.
      this.links.delete(peer);
      this.execute(this.core.onPeerDown(peer, this.world.now));
    }
    this.links.set(peer, generation);
    this.execute(this.core.onPeerUp(peer, this.world.now));
  }

  linkDown(peer: number, generation: number): void {
    if (this.links.get(peer) !== generation) return;
    this.links.delete(peer);
    this.execute(this.core.onPeerDown(peer, this.world.now));
  }

  /** A probe of the peer's port was refused (peer.ts probe): nothing listens there. */
  refused(peer: number): void {
    if (this.links.has(peer)) return;
    this.execute(this.core.onPeerRefused(peer, this.world.now));
  }

  message(from: number, generation: number, message: PeerMessage): void {
    if (this.links.get(from) !== generation) return;
    this.execute(this.core.onMessage(from, message, this.world.now));
  }

  // ---- client writes (manager.submitWrite and the group commit) --------------------------

  private canAcceptWrites(): boolean {
    this.execute(this.core.observe(this.world.now));
    return this.core.canAcceptWrites();
  }

  clientRequest(attempt: Attempt): void {
    if (attempt.connection !== this.connection) return; // the connection it came on is closed
    if (!this.canAcceptWrites()) return this.world.respond(attempt, { kind: "not_primary" });
    const previous = this.storage.dedupLookup(attempt.clientId, attempt.requestId);
    if (previous !== undefined) {
      this.world.trace(`${this.id} dedup ${attempt.clientId}#${attempt.requestId} at ${previous} (committed ${this.core.committed})`);
      if (previous <= this.core.committed) this.acknowledge(attempt, previous);
      else this.waitingDedup.push({ index: previous, clientId: attempt.clientId, requestId: attempt.requestId, attempts: [attempt] });
      return;
    }
    const queued = this.queue.find((item) => item.clientId === attempt.clientId && item.requestId === attempt.requestId);
    if (queued) {
      queued.attempts.push(attempt);
      return;
    }
    this.queue.push({ clientId: attempt.clientId, requestId: attempt.requestId, attempts: [attempt] });
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      const incarnation = this.incarnation;
      this.world.at(this.world.now, () => {
        if (this.incarnation === incarnation) this.handle("flush", () => this.flush());
      });
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.queue.length === 0) return;
    if (!this.canAcceptWrites()) {
      for (const item of this.queue.splice(0)) for (const attempt of item.attempts) this.world.respond(attempt, { kind: "not_primary" });
      return;
    }
    const batch = this.queue.splice(0, this.world.groupCommitMax);
    if (this.queue.length > 0) {
      this.flushScheduled = true;
      const incarnation = this.incarnation;
      this.world.at(this.world.now, () => {
        if (this.incarnation === incarnation) this.handle("flush", () => this.flush());
      });
    }
    this.propose(batch.map((item) => ({ clientId: item.clientId, requestId: item.requestId, command: writeCommand(item), attempts: item.attempts })));
  }

  /** manager.propose: write in the open transaction, ship, fsync (commit), then onLocalPersisted. */
  private propose(batch: { clientId: string | null; requestId: number | null; command: Command; attempts: Attempt[] }[]): void {
    const epoch = this.core.epoch;
    const first = this.storage.lastIndex + 1;
    const entries = batch.map((item, position) => freezeEntry({ index: first + position, epoch, clientId: item.clientId, requestId: item.requestId, command: item.command }));
    this.storage.append(entries, false);
    this.world.trace(`${this.id} propose [${first}..${first + entries.length - 1}] e${epoch} ${entries.map((entry) => (entry.clientId ? `${entry.clientId}#${entry.requestId}` : entry.command.op)).join(" ")}`);
    this.execute(this.core.onLocalProposed(entries, this.world.now));
    if (this.armed?.kind === "fsync" && this.world.mayCrash(this)) throw new SimCrash("armed: crash during the primary's own fsync");
    this.storage.sync();
    for (const [position, item] of batch.entries()) {
      if (item.clientId === null || item.requestId === null) continue;
      const pending = { index: entries[position].index, clientId: item.clientId, requestId: item.requestId, attempts: item.attempts };
      if (this.world.shellBugs.has("ack-on-propose")) for (const attempt of pending.attempts) this.acknowledge(attempt, pending.index);
      else this.pendingWrites.push(pending);
    }
    this.execute(this.core.onLocalPersisted(this.storage.lastIndex, this.world.now));
  }

  private acknowledge(attempt: Attempt, index: number): void {
    this.world.onAck(this, attempt.clientId, attempt.requestId, index);
    this.world.respond(attempt, { kind: "ok", index });
  }

  // ---- carrying out the core's actions (manager.execute) ----------------------------------

  execute(actions: Action[]): void {
    for (const action of actions) {
      if (this.armed?.kind === "actions") {
        this.armed.remaining -= 1;
        if (this.armed.remaining < 0) {
          if (this.world.mayCrash(this)) throw new SimCrash("armed: crash between two actions");
          this.armed = null;
        }
      }
      this.world.trace(`${this.id}   ${formatAction(action)}`);
      switch (action.type) {
        case "send":
          this.world.send(this.id, action.to, action.message);
          break;
        case "persist":
          this.storage.append(action.entries, !this.world.shellBugs.has("backup-persist-volatile"));
          this.execute(this.core.onPersisted(this.storage.lastIndex, this.world.now));
          break;
        case "truncate":
          this.storage.truncateAfter(action.afterIndex);
          this.world.onTruncate(this, action.afterIndex);
          break;
        case "promise":
          this.world.onPromise(this, action.epoch);
          if (!this.world.shellBugs.has("promise-volatile")) this.storage.promisedEpoch = action.epoch;
          break;
        case "propose_config": {
          const command = freezeCommand(action.config);
          if (this.heldConfig) {
            // manager.propose: a newer config replaces the one waiting.
            this.heldConfig = { epoch: this.core.epoch, config: command };
            this.world.trace(`${this.id} config ${action.reason} held, replacing the one held`);
            break;
          }
          if (action.reason === "takeover" && this.rng.chance(0.3)) {
            this.holdConfig(command, this.rng.int(10, 300));
            break;
          }
          this.propose([{ clientId: null, requestId: null, command, attempts: [] }]);
          break;
        }
        case "commit":
          this.world.onCommit(this, action.index);
          this.onCommit(action.index);
          break;
        case "role":
          if (action.role === "primary" && action.serving && !this.storage.hasBootstrap()) {
            this.propose([{ clientId: null, requestId: null, command: { op: "bootstrap", channels: ["general", "random"] }, attempts: [] }]);
          }
          if (action.role === "primary" && action.serving) {
            this.wasServing = true;
            this.world.onServing(this);
          } else if (this.wasServing) this.loseClients();
          break;
        case "frozen":
          this.loseClients();
          break;
      }
    }
  }

  private onCommit(index: number): void {
    let done = 0;
    for (const pending of this.pendingWrites) {
      if (pending.index > index) break;
      done += 1;
      for (const attempt of pending.attempts) this.acknowledge(attempt, pending.index);
    }
    this.pendingWrites.splice(0, done);
    for (let position = this.waitingDedup.length - 1; position >= 0; position -= 1) {
      const waiting = this.waitingDedup[position];
      if (waiting.index <= index) {
        this.waitingDedup.splice(position, 1);
        for (const attempt of waiting.attempts) this.acknowledge(attempt, waiting.index);
      }
    }
  }

  /** Stepped down or frozen: close every client connection first, so pending writes get no answer. */
  private loseClients(): void {
    this.wasServing = false;
    const connection = this.connection;
    this.connection += 1;
    this.world.dropClientConnections(this.id, connection);
    this.pendingWrites = [];
    this.waitingDedup = [];
    this.queue = [];
  }
}

function writeCommand(item: Queued): Command {
  return { op: "post", actor: 1, channel: "general", body: `${item.clientId}#${item.requestId}`, ts: 0 };
}

function freezeCommand(config: ConfigCommand): ConfigCommand {
  return Object.freeze({ op: "config", primary: config.primary, members: Object.freeze([...config.members]) as number[] });
}

/** Entries are shared between simulated servers (as JSON copies would be equal): freeze them. */
function freezeEntry(entry: LogEntry): LogEntry {
  Object.freeze(entry.command);
  return Object.freeze(entry);
}
