// The deterministic simulation of Chat+'s replication core (core/replica.ts).
//
// One seed drives everything: the network (delays, FIFO or loss, connection drops), the fault schedule
// (kill -9 and restart, freezes, full-cluster restarts, crashes at armed points such as inside the
// primary's own fsync), the clients and each replica's jitter. The clock is simulated: integer
// milliseconds advanced by the scheduler. A run has three phases:
//   1. faults: for a random 1.5-5 s, faults strike within the fault model (at most N-1 servers down
//      -- crashed or frozen -- at any moment, except during an explicit full-cluster restart);
//   2. heal: every server is restarted or resumed and the network healed; clients keep writing for 1 s;
//   3. quiet: once every client write has finished and the cluster has converged (one serving primary,
//      every server in its config, all logs identical and committed), the final checks run.
// The "partition" network mode is outside the safety fault model: there only the epoch invariant
// counts as a failure and everything else found is reported as an observation.
import { Replica, type Timing } from "../../core/replica.js";
import type { PeerMessage } from "../../core/messages.js";
import * as consts from "../../connections/consts.js";
import { Checker, type Violation, type ViolationKind } from "./checker.js";
import { SimNetwork, type NetworkMode } from "./network.js";
import { Rng, mixSeed } from "./rng.js";
import { Scheduler } from "./scheduler.js";
import { SimCrash, SimServer, type Attempt, type ClientOutcome, type ShellBug, type World } from "./server.js";
import type { StorageViolation } from "./storage.js";
import { Trace } from "./trace.js";
import { SimClient, type ClientTiming, type ClientWorld, type OpRecord } from "./workload.js";

export type { NetworkMode } from "./network.js";
export type { Violation, ViolationKind } from "./checker.js";
export { violationKinds } from "./checker.js";

export type SimOptions = {
  seed: number;
  /** Default: chosen from the seed (mostly tcp, some tcp-drops and lossy; partition only on request). */
  mode?: NetworkMode;
  /** Default: chosen from the seed (3 mostly, sometimes 4 or 5). */
  servers?: number;
  /** Print every trace line here. */
  log?: (line: string) => void;
  /** Wraps each new Replica (planted bugs). */
  decorate?: (server: SimServer, replica: Replica) => void;
  shellBugs?: ShellBug[];
  timing?: Partial<Timing>;
  faultPhaseMs?: [number, number];
  clients?: number;
  tailLines?: number;
  /** Called with the servers once the run ends (for diagnostics). */
  onEnd?: (servers: SimServer[]) => void;
};

export type SimResult = {
  seed: number;
  mode: NetworkMode;
  servers: number;
  /** Violations that fail the seed (in partition mode: only epoch and crash). */
  violations: Violation[];
  /** Partition mode: what else the checker saw, for information. */
  observations: Violation[];
  traceHash: string;
  traceLines: number;
  steps: number;
  simMs: number;
  faults: number;
  ops: { total: number; ok: number; fail: number; unknown: number };
  acked: number;
  committed: number;
  /** Time from the end of the faults until the cluster converged. */
  livenessMs: number | null;
  tail: string[];
};

export const tickIntervalMs = consts.tickIntervalMs;

/** Production timing (connections/consts.ts) with batch sizes scaled down so small runs split batches. */
export const simTiming: Timing = {
  heartbeatIntervalMs: consts.heartbeatIntervalMs,
  peerTimeoutMs: consts.peerTimeoutMs,
  freezeDetectMs: consts.freezeDetectMs,
  leaseMs: consts.leaseMs,
  takeoverWaitMs: consts.takeoverWaitMs,
  unreachableGraceMs: consts.unreachableGraceMs,
  batchEntriesMax: 4,
  inflightEntriesMax: 12,
};

const clientTiming: ClientTiming = {
  attemptTimeoutMs: 800,
  retryBudgetMs: 3000,
  retryBackoffMinMs: 10,
  retryBackoffMaxMs: 200,
  thinkMsMax: 40,
};

const groupCommitMax = 4;
const postHealWorkloadMs = 1000;
export const livenessBoundMs = 12_000;

export function modeForSeed(seed: number): NetworkMode {
  const roll = mixSeed(seed, 0x6d6f6465) % 100;
  return roll < 65 ? "tcp" : roll < 88 ? "tcp-drops" : "lossy";
}

export function serversForSeed(seed: number): number {
  const roll = mixSeed(seed, 0x6e6f6465) % 100;
  return roll < 80 ? 3 : roll < 90 ? 4 : 5;
}

type FaultKind = "crash" | "bounce" | "freeze" | "drop" | "fsync-crash" | "action-crash" | "full-restart" | "cut";

class Simulation implements World, ClientWorld {
  readonly scheduler = new Scheduler();
  readonly order: number[];
  readonly timing: Timing;
  readonly groupCommitMax = groupCommitMax;
  readonly tickIntervalMs = tickIntervalMs;
  readonly shellBugs: ReadonlySet<ShellBug>;
  readonly checker: Checker;
  readonly traceLog: Trace;
  readonly network: SimNetwork;
  readonly servers: SimServer[];
  readonly clients: SimClient[];
  private readonly faultRng: Rng;
  private readonly netRng: Rng;
  private readonly clientLinkAt = new Map<string, number>();
  private stopped = false;
  private faultsActive = true;
  private fullRestartUntil = -1;
  private faultCount = 0;
  private readonly faultEnd: number;
  private readonly workloadEnd: number;
  private livenessAt: number | null = null;
  private quietHeader: string | null = null;

  constructor(
    readonly options: SimOptions,
    readonly mode: NetworkMode,
    serverCount: number,
  ) {
    const root = new Rng(options.seed);
    this.faultRng = root.fork(1);
    this.netRng = root.fork(2);
    this.order = Array.from({ length: serverCount }, (_, i) => i + 1);
    this.timing = { ...simTiming, ...options.timing };
    this.shellBugs = new Set(options.shellBugs ?? []);
    this.checker = new Checker(this.scheduler, (violation) => this.traceLine(`VIOLATION ${violation.kind}: ${violation.message}`));
    this.traceLog = new Trace(options.tailLines ?? 80, options.log);
    this.network = new SimNetwork(mode, this.order, this.netRng, this);
    this.servers = this.order.map((id) => new SimServer(id, this, root.fork(100 + id)));
    this.clients = Array.from({ length: options.clients ?? 3 }, (_, i) => new SimClient(i + 1, this, root.fork(200 + i), clientTiming));
    const [low, high] = options.faultPhaseMs ?? [1500, 5000];
    this.faultEnd = this.faultRng.int(low, high);
    this.workloadEnd = this.faultEnd + postHealWorkloadMs;
  }

  get now(): number {
    return this.scheduler.now;
  }

  server(id: number): SimServer {
    return this.servers[id - 1];
  }

  at(time: number, run: () => void): void {
    if (!this.stopped) this.scheduler.at(time, run);
  }

  // ---- tracing -------------------------------------------------------------------------------

  trace(text: string): void {
    this.traceLine(text);
  }

  traceLine(text: string): void {
    if (this.quietHeader !== null) {
      const header = this.quietHeader;
      this.quietHeader = null;
      this.traceLog.line(this.now, header);
    }
    this.traceLog.line(this.now, text);
  }

  // ---- World (servers) --------------------------------------------------------------------------

  runEvent(server: SimServer, label: string, run: () => void): void {
    if (this.stopped) return;
    // Ticks and heartbeats that change nothing are left out of the trace (they are deterministic too).
    const quiet = label === "tick" || label.includes(" hb ");
    if (quiet) this.quietHeader = `${server.id} ${label}`;
    else this.traceLine(`${server.id} ${label}`);
    try {
      run();
    } catch (error) {
      this.quietHeader = null;
      if (error instanceof SimCrash) {
        this.crashServer(server, error.message);
        return;
      }
      const message = error instanceof Error ? error.message : String(error);
      this.traceLine(`${server.id} THREW ${message}`);
      this.violation("crash", `server ${server.id} threw while handling "${label}": ${message}`);
      this.stopped = true;
      return;
    }
    this.quietHeader = null;
    this.checker.afterEvent(server);
  }

  send(from: number, to: number, message: PeerMessage): void {
    this.network.send(from, to, message);
  }

  mayCrash(server: SimServer): boolean {
    return this.faultsActive && this.allowedDown(server);
  }

  onAck(server: SimServer, clientId: string, requestId: number, index: number): void {
    this.traceLine(`${server.id} ACK ${clientId}#${requestId} at ${index} (epoch ${server.core.epoch})`);
    this.checker.onAck(server, clientId, requestId, index);
  }

  onServing(server: SimServer): void {
    this.checker.onServing(server);
  }

  onCommit(server: SimServer, index: number): void {
    this.checker.onCommit(server, index);
  }

  onTruncate(server: SimServer, afterIndex: number): void {
    this.checker.onTruncate(server, afterIndex);
  }

  onPromise(server: SimServer, epoch: number): void {
    this.checker.onPromise(server, epoch);
  }

  onStorageViolation(server: SimServer, violation: StorageViolation): void {
    this.violation(violation.kind, `server ${server.id}: ${violation.message}`);
  }

  decorate(server: SimServer, replica: Replica): void {
    this.options.decorate?.(server, replica);
  }

  private violation(kind: ViolationKind, message: string): void {
    this.checker.record(kind, message);
  }

  // ---- client connections ----------------------------------------------------------------------

  private clientLinkTime(client: number, server: number): number {
    const key = `${client}-${server}`;
    const at = Math.max(this.now + this.netRng.int(1, 3), this.clientLinkAt.get(key) ?? 0);
    this.clientLinkAt.set(key, at);
    return at;
  }

  deliver(attempt: Attempt): void {
    const server = this.server(attempt.server);
    attempt.connection = server.connection;
    this.traceLine(`client ${attempt.clientId}#${attempt.requestId} try ${attempt.number} -> ${attempt.server}`);
    const client = this.clients[attempt.clientIndex - 1];
    this.at(this.clientLinkTime(attempt.clientIndex, attempt.server), () => {
      if (!server.up || server.connection !== attempt.connection) {
        // Connection refused or already closed.
        this.at(this.clientLinkTime(attempt.clientIndex, attempt.server), () => client.onDisconnect(attempt));
        return;
      }
      server.handle(`client ${attempt.clientId}#${attempt.requestId} try ${attempt.number}`, () => server.clientRequest(attempt));
    });
  }

  respond(attempt: Attempt, outcome: ClientOutcome): void {
    const server = this.server(attempt.server);
    if (server.connection !== attempt.connection) return; // written to a closed connection
    const client = this.clients[attempt.clientIndex - 1];
    this.at(this.clientLinkTime(attempt.clientIndex, attempt.server), () => client.onResponse(attempt, outcome));
  }

  dropClientConnections(serverId: number, connection: number): void {
    for (const client of this.clients) {
      const attempt = client.current();
      if (!attempt || attempt.server !== serverId || attempt.connection > connection) continue;
      this.at(this.clientLinkTime(client.index, serverId), () => client.onDisconnect(attempt));
    }
  }

  // ---- ClientWorld -------------------------------------------------------------------------------

  primaries(): number[] {
    return this.servers.filter((server) => server.replica?.canAcceptWrites()).map((server) => server.id);
  }

  acceptingOps(): boolean {
    return this.now < this.workloadEnd;
  }

  invoked(op: OpRecord): void {
    this.traceLine(`client ${op.clientId}#${op.requestId} invoke`);
    this.checker.invoked(op);
  }

  finished(op: OpRecord): void {
    this.traceLine(`client ${op.clientId}#${op.requestId} ${op.outcome}${op.index !== null ? ` at ${op.index}` : ""} after ${op.attempts} tries`);
  }

  // ---- faults ----------------------------------------------------------------------------------

  private downCount(): number {
    return this.servers.filter((server) => !server.up || server.frozen).length;
  }

  /** At most N-1 servers down (crashed or frozen) at once, outside a full-cluster restart. */
  private allowedDown(target: SimServer): boolean {
    const extra = target.up && !target.frozen ? 1 : 0;
    return this.downCount() + extra <= this.servers.length - 1;
  }

  crashServer(server: SimServer, reason: string): void {
    if (!server.up) return;
    server.crash(reason);
    this.network.serverCrashed(server.id);
    if (this.faultsActive && this.now >= this.fullRestartUntil) {
      const downtime = this.faultRng.chance(0.3) ? this.faultRng.int(0, 30) : this.faultRng.int(30, 1500);
      this.restartAt(server, this.now + downtime);
    }
  }

  private restartAt(server: SimServer, time: number): void {
    const incarnation = server.incarnation;
    this.at(time, () => {
      if (server.up || server.incarnation !== incarnation) return;
      this.startServer(server);
    });
  }

  private startServer(server: SimServer): void {
    server.start();
    this.checker.onRestart(server);
    this.network.serverStarted(server.id);
  }

  private scheduleFault(): void {
    const at = this.now + this.faultRng.int(80, 700);
    if (at >= this.faultEnd) return;
    this.at(at, () => {
      if (!this.faultsActive) return;
      if (this.now >= this.fullRestartUntil) this.injectFault();
      this.scheduleFault();
    });
  }

  private chooseFault(): FaultKind {
    const weights: [FaultKind, number][] = [
      ["crash", 22],
      ["bounce", 8],
      ["freeze", 25],
      ["fsync-crash", 8],
      ["action-crash", 7],
      ["full-restart", 4],
    ];
    if (this.mode !== "tcp") weights.push(["drop", 20]);
    if (this.mode === "partition") weights.push(["cut", 30]);
    const total = weights.reduce((sum, [, weight]) => sum + weight, 0);
    let roll = this.faultRng.int(0, total - 1);
    for (const [kind, weight] of weights) {
      if (roll < weight) return kind;
      roll -= weight;
    }
    return "crash";
  }

  private injectFault(): void {
    const kind = this.chooseFault();
    const running = this.servers.filter((server) => server.up);
    const awake = running.filter((server) => !server.frozen);
    const rng = this.faultRng;
    switch (kind) {
      case "crash":
      case "bounce": {
        const candidates = running.filter((server) => this.allowedDown(server));
        if (candidates.length === 0) return;
        const target = rng.pick(candidates);
        this.countFault(`${kind} ${target.id}`);
        target.crash(kind === "crash" ? "kill -9" : "kill -9, restart at once");
        this.network.serverCrashed(target.id);
        this.restartAt(target, this.now + (kind === "bounce" ? rng.int(0, 20) : rng.int(30, 1500)));
        return;
      }
      case "freeze": {
        const candidates = awake.filter((server) => this.allowedDown(server));
        if (candidates.length === 0) return;
        const target = rng.pick(candidates);
        const roll = rng.int(0, 9);
        const duration = roll < 3 ? rng.int(20, this.timing.freezeDetectMs - 10) : roll < 7 ? rng.int(this.timing.freezeDetectMs + 10, 450) : rng.int(450, 1500);
        this.countFault(`freeze ${target.id} for ${duration}ms`);
        target.freeze();
        const token = target.freezeToken;
        this.at(this.now + duration, () => {
          if (target.freezeToken === token) target.unfreeze();
        });
        return;
      }
      case "fsync-crash":
      case "action-crash": {
        const primaries = awake.filter((server) => server.replica?.canAcceptWrites() || server.replica?.currentRole === "primary");
        const pool = kind === "fsync-crash" && primaries.length > 0 ? primaries : awake;
        if (pool.length === 0) return;
        const target = rng.pick(pool);
        target.armed = kind === "fsync-crash" ? { kind: "fsync" } : { kind: "actions", remaining: rng.int(0, 8) };
        this.countFault(`arm ${kind} on ${target.id}`);
        return;
      }
      case "full-restart": {
        this.countFault("full-cluster restart");
        let latest = this.now;
        for (const server of running) {
          server.crash("full-cluster stop");
          this.network.serverCrashed(server.id);
        }
        for (const server of this.servers) {
          const at = this.now + rng.int(20, 1000);
          latest = Math.max(latest, at);
          this.restartAt(server, at);
        }
        this.fullRestartUntil = latest + 1;
        return;
      }
      case "drop": {
        const a = rng.pick(this.order);
        const b = rng.pick(this.order.filter((id) => id !== a));
        if (this.network.dropLink(a, b)) this.countFault(`drop link ${a}-${b}`);
        return;
      }
      case "cut": {
        const a = rng.pick(this.order);
        const b = rng.pick(this.order.filter((id) => id !== a));
        this.countFault(`cut ${a}-${b}`);
        this.network.cut(a, b, rng.chance(0.5), rng.chance(0.3));
        return;
      }
    }
  }

  private countFault(description: string): void {
    this.faultCount += 1;
    this.traceLine(`FAULT ${description}`);
  }

  /** The faults stop: every server is resumed or restarted and the network healed. */
  private heal(): void {
    this.faultsActive = false;
    this.traceLine("HEAL: faults stop; every server is resumed or restarted");
    this.network.healCuts();
    for (const server of this.servers) {
      server.armed = null;
      if (server.up && server.frozen) server.unfreeze();
    }
    for (const server of this.servers) if (!server.up) this.restartAt(server, this.now + this.faultRng.int(0, 50));
  }

  // ---- liveness ----------------------------------------------------------------------------

  /** One serving primary, every server a caught-up member of its config, everything committed. */
  converged(): boolean {
    if (this.servers.some((server) => !server.up || server.frozen)) return false;
    const primaries = this.servers.filter((server) => server.core.canAcceptWrites());
    if (primaries.length !== 1) return false;
    const primary = primaries[0];
    const status = primary.core.status();
    if (status.members.length !== this.servers.length) return false;
    if (primary.core.committed !== primary.storage.lastIndex) return false;
    const last = primary.storage.entry(primary.storage.lastIndex);
    for (const server of this.servers) {
      if (server === primary) continue;
      if (server.core.currentRole !== "backup") return false;
      if (server.storage.lastIndex !== primary.storage.lastIndex || server.storage.entry(server.storage.lastIndex) !== last) return false;
    }
    return true;
  }

  /** Every server once converged; otherwise the serving primary and the in-sync members of its config. */
  private caughtUp(): SimServer[] {
    if (this.converged()) return this.servers;
    const primary = this.servers.find((server) => server.up && !server.frozen && server.core.canAcceptWrites());
    if (!primary) return [];
    const members = primary.core.status().members;
    return this.servers.filter((server) => {
      if (server === primary) return true;
      if (!server.up || !members.includes(server.id)) return false;
      const status = server.core.status();
      return status.eligible && status.role === "backup" && status.lastIndex === primary.storage.lastIndex;
    });
  }

  private probe(): void {
    const converged = this.converged();
    if (converged && this.livenessAt === null) {
      this.livenessAt = this.now;
      this.traceLine(`LIVE: converged ${this.now - this.faultEnd}ms after the faults stopped`);
    }
    const idle = this.clients.every((client) => client.idle);
    if (converged && idle && this.now >= this.workloadEnd) {
      this.stopped = true;
      return;
    }
    this.at(this.now + 20, () => this.probe());
  }

  // ---- run -----------------------------------------------------------------------------------

  run(): SimResult {
    for (const server of this.servers) this.startServer(server);
    for (const client of this.clients) client.start(this.faultRng.int(20, 300));
    const faultStart = this.faultRng.int(50, 600);
    this.at(faultStart, () => {
      this.injectFault();
      this.scheduleFault();
    });
    this.at(this.faultEnd, () => this.heal());
    this.at(this.faultEnd, () => this.probe());
    const bound = this.faultEnd + livenessBoundMs;
    while (!this.stopped && this.scheduler.step(bound)) {
      // run events in order
    }
    const crashed = this.checker.violations.some((violation) => violation.kind === "crash");
    if (!this.stopped) {
      if (!this.converged()) {
        this.violation("liveness", `no converged cluster ${livenessBoundMs}ms after the faults stopped: ${this.describe()}`);
      } else this.violation("stuck", `cluster converged but clients still busy ${livenessBoundMs}ms after the faults stopped`);
    }
    if (!crashed) this.checker.final(this.servers, this.caughtUp(), this.livenessAt);
    this.options.onEnd?.(this.servers);
    return this.result();
  }

  describe(): string {
    return this.servers
      .map((server) => {
        if (!server.up) return `${server.id}:down`;
        const status = server.core.status();
        return `${server.id}:${status.role}${status.serving ? "*" : ""}${status.eligible ? "+el" : ""} e${status.epoch} cfg${status.configEpoch}/${status.members.join(",")} last${status.lastIndex}/${status.lastEpoch} ci${status.commitIndex}${server.frozen ? " frozen" : ""}`;
      })
      .join("  ");
  }

  private result(): SimResult {
    const counted = (violation: Violation) => this.mode !== "partition" || violation.kind === "epoch" || violation.kind === "crash";
    const ops = this.checker.ops;
    return {
      seed: this.options.seed,
      mode: this.mode,
      servers: this.servers.length,
      violations: this.checker.violations.filter(counted),
      observations: this.checker.violations.filter((violation) => !counted(violation)),
      traceHash: this.traceLog.digest(),
      traceLines: this.traceLog.lines,
      steps: this.scheduler.steps,
      simMs: this.now,
      faults: this.faultCount,
      ops: {
        total: ops.length,
        ok: ops.filter((op) => op.outcome === "ok").length,
        fail: ops.filter((op) => op.outcome === "fail").length,
        unknown: ops.filter((op) => op.outcome === "unknown").length,
      },
      acked: this.checker.ackCount,
      committed: this.checker.committedLength,
      livenessMs: this.livenessAt === null ? null : this.livenessAt - this.faultEnd,
      tail: this.traceLog.last(this.options.tailLines ?? 80),
    };
  }
}

/** Runs one seed to completion and checks it. */
export function runSeed(options: SimOptions): SimResult {
  const mode = options.mode ?? modeForSeed(options.seed);
  const servers = options.servers ?? serversForSeed(options.seed);
  return new Simulation(options, mode, servers).run();
}

/** A failing seed as a report: seed, failure classes and the tail of the trace. */
export function formatFailure(result: SimResult, tailLines = 40): string {
  const lines = [
    `seed ${result.seed} (mode ${result.mode}, ${result.servers} servers) FAILED: ${[...new Set(result.violations.map((v) => v.kind))].join(", ")}`,
    ...result.violations.map((violation) => `  [${violation.kind}] t=${violation.at}: ${violation.message}`),
    `  replay: npm run sim -- --seed ${result.seed} --mode ${result.mode} --servers ${result.servers} --verbose`,
    `  last ${tailLines} trace lines:`,
    ...result.tail.slice(-tailLines).map((line) => `    ${line}`),
  ];
  return lines.join("\n");
}
