// Simulated clients. Each client runs one write at a time, like the client connector: it sends the
// write to a server that says it is a serving primary, and retries with the same (clientId,
// requestId) after NOT_PRIMARY, a dropped connection or a timeout, until it gets an answer or its
// retry budget runs out. A timeout or a dropped connection leaves the outcome unknown; only a write
// whose every attempt was refused with NOT_PRIMARY is known not to have happened.
import { backoffDelayMs } from "../../utils.js";
import type { Rng } from "./rng.js";
import type { Attempt, ClientOutcome } from "./server.js";

export type OpOutcome = "ok" | "fail" | "unknown";

export type OpRecord = {
  client: number;
  clientId: string;
  requestId: number;
  invokeAt: number;
  endAt: number | null;
  outcome: OpOutcome | null;
  /** Log index the write was acknowledged at. */
  index: number | null;
  attempts: number;
  /** Some attempt may have reached a primary and been proposed. */
  maybeApplied: boolean;
};

export type ClientTiming = {
  attemptTimeoutMs: number;
  retryBudgetMs: number;
  retryBackoffMinMs: number;
  retryBackoffMaxMs: number;
  thinkMsMax: number;
};

export interface ClientWorld {
  readonly now: number;
  at(time: number, run: () => void): void;
  trace(text: string): void;
  /** Servers that currently say they accept writes (a client's possibly stale view). */
  primaries(): number[];
  /** Sends an attempt to its server over the client connection. */
  deliver(attempt: Attempt): void;
  acceptingOps(): boolean;
  invoked(op: OpRecord): void;
  finished(op: OpRecord): void;
}

export class SimClient {
  readonly clientId: string;
  private requestId = 0;
  private op: OpRecord | null = null;
  private attempt: Attempt | null = null;
  private waits = 0;
  idle = true;

  constructor(
    readonly index: number,
    private readonly world: ClientWorld,
    private readonly rng: Rng,
    private readonly timing: ClientTiming,
  ) {
    this.clientId = `c${index}`;
  }

  start(at: number): void {
    this.world.at(at, () => this.nextOp());
  }

  private nextOp(): void {
    if (!this.world.acceptingOps()) {
      this.idle = true;
      return;
    }
    this.idle = false;
    this.requestId += 1;
    this.op = {
      client: this.index,
      clientId: this.clientId,
      requestId: this.requestId,
      invokeAt: this.world.now,
      endAt: null,
      outcome: null,
      index: null,
      attempts: 0,
      maybeApplied: false,
    };
    this.waits = 0;
    this.world.invoked(this.op);
    this.tryAttempt();
  }

  private tryAttempt(): void {
    const op = this.op!;
    this.attempt = null;
    if (this.world.now - op.invokeAt >= this.timing.retryBudgetMs) return this.finish(op.maybeApplied ? "unknown" : "fail", null);
    const primaries = this.world.primaries();
    if (primaries.length === 0) return this.retryLater();
    op.attempts += 1;
    const attempt: Attempt = {
      clientIndex: this.index,
      clientId: this.clientId,
      requestId: op.requestId,
      number: op.attempts,
      server: this.rng.pick(primaries),
      connection: -1, // set by the world when it opens or reuses the connection
    };
    this.attempt = attempt;
    this.world.deliver(attempt);
    this.world.at(this.world.now + this.timing.attemptTimeoutMs, () => {
      if (this.attempt !== attempt) return;
      this.world.trace(`client ${this.clientId}#${op.requestId} try ${attempt.number} at ${attempt.server} timed out`);
      op.maybeApplied = true;
      this.retryLater();
    });
  }

  private retryLater(): void {
    this.attempt = null;
    this.waits += 1;
    const delay = backoffDelayMs(this.waits, this.timing.retryBackoffMinMs, this.timing.retryBackoffMaxMs, this.rng.next);
    this.world.at(this.world.now + delay, () => this.tryAttempt());
  }

  onResponse(attempt: Attempt, outcome: ClientOutcome): void {
    if (this.attempt !== attempt) return; // a late answer to an attempt already given up on
    const op = this.op!;
    if (outcome.kind === "ok") return this.finish("ok", outcome.index);
    this.world.trace(`client ${this.clientId}#${op.requestId} try ${attempt.number} at ${attempt.server}: not primary`);
    this.retryLater();
  }

  onDisconnect(attempt: Attempt): void {
    if (this.attempt !== attempt) return;
    const op = this.op!;
    this.world.trace(`client ${this.clientId}#${op.requestId} try ${attempt.number} at ${attempt.server}: connection dropped, outcome unknown`);
    op.maybeApplied = true;
    this.retryLater();
  }

  /** The attempt this client waits on, if any. */
  current(): Attempt | null {
    return this.attempt;
  }

  private finish(outcome: OpOutcome, index: number | null): void {
    const op = this.op!;
    op.outcome = outcome;
    op.index = index;
    op.endAt = this.world.now;
    this.attempt = null;
    this.op = null;
    this.world.finished(op);
    this.world.at(this.world.now + this.rng.int(0, this.timing.thinkMsMax), () => this.nextOp());
  }
}
