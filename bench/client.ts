// A lean protocol client for load generation: raw TCP, newline-delimited JSON, pipelining, and
// failover with exactly-once retries (same clientId, same request id on the next primary).
//
// Parsing is minimal on purpose: the load generator shares the machine's two cores with three
// servers. Responses are recognised by their fixed prefix ({"v":1,"type":"ok","id":N,...}, the key
// order the server's JSON.stringify produces) and push events by theirs; only error responses and
// requests that need their data are parsed with JSON.parse.
import net from "node:net";
import type { ClusterConfig, Machine } from "../connections/consts.js";
import {
  connectTimeoutMs,
  controlRequestTimeoutMs,
  failoverAttemptsMax,
  failoverBudgetMs,
  failoverRetryMs,
  locatorPingIntervalMs,
  locatorPingTimeoutMs,
  locatorStaleMs,
} from "./consts.js";

const okPrefix = '{"v":1,"type":"ok","id":';
const errorPrefix = '{"v":1,"type":"error","id":';
const eventPrefix = '{"v":1,"type":"event"';

export type Outcome =
  | { ok: true; serverId: number; data?: Record<string, any> }
  | { ok: false; serverId: number; code: string; message: string };

export type ServerStatus = { serverId: number; role: string; epoch: number; primaryId: number | null; commitIndex: number; lastIndex: number; members: number[] };

/** Errors after which the same request is retried on the (next) primary. */
const failoverCodes = new Set(["CHAT_ERR_NOT_PRIMARY", "CHAT_ERR_UNAVAILABLE"]);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Reads the request id right after a known prefix; -1 if it is not a plain integer. */
function idAfter(line: string, prefixLength: number): number {
  let id = 0;
  let position = prefixLength;
  for (; position < line.length; position += 1) {
    const code = line.charCodeAt(position);
    if (code < 48 || code > 57) break;
    id = id * 10 + (code - 48);
  }
  return position === prefixLength ? -1 : id;
}

type Waiter = (outcome: Outcome) => void;

/** One TCP connection to one server. Responses are matched to requests by id. */
export class Link {
  private tail = "";
  private readonly waiters = new Map<number, { wantData: boolean; done: Waiter }>();
  private closeListeners: ((reason: string) => void)[] = [];
  closed = false;
  events = 0;
  /** Called for responses with no waiter on this link (the client's pending writes). */
  onUnmatched: (id: number, line: string, isError: boolean) => void = () => {};

  private constructor(
    readonly socket: net.Socket,
    readonly serverId: number,
  ) {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.onData(chunk));
    socket.on("error", () => {});
    socket.on("close", () => this.onClose("connection closed"));
  }

  static open(machine: Machine, timeoutMs = connectTimeoutMs): Promise<Link> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: machine.host, port: machine.clientPort, noDelay: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to server ${machine.id} timed out`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve(new Link(socket, machine.id));
      });
      socket.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  write(line: string): void {
    if (!this.closed) this.socket.write(line);
  }

  /** Sends one request and waits for its response on this link only (no retry). */
  request(id: number, line: string, timeoutMs = controlRequestTimeoutMs, wantData = true): Promise<Outcome> {
    return new Promise((resolve) => {
      if (this.closed) return resolve({ ok: false, serverId: this.serverId, code: "BENCH_CLOSED", message: "link closed" });
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        resolve({ ok: false, serverId: this.serverId, code: "BENCH_TIMEOUT", message: `no answer within ${timeoutMs} ms` });
      }, timeoutMs);
      this.waiters.set(id, {
        wantData,
        done: (outcome) => {
          clearTimeout(timer);
          resolve(outcome);
        },
      });
      this.socket.write(line);
    });
  }

  whenClosed(listener: (reason: string) => void): void {
    if (this.closed) listener("already closed");
    else this.closeListeners.push(listener);
  }

  close(reason = "closed by client"): void {
    this.socket.destroy();
    this.onClose(reason);
  }

  private onClose(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    for (const [, waiter] of this.waiters) waiter.done({ ok: false, serverId: this.serverId, code: "BENCH_CLOSED", message: reason });
    this.waiters.clear();
    for (const listener of this.closeListeners.splice(0)) listener(reason);
  }

  private onData(chunk: string): void {
    let start = 0;
    let text = chunk;
    if (this.tail.length > 0) {
      text = this.tail + chunk;
      this.tail = "";
    }
    for (;;) {
      const newline = text.indexOf("\n", start);
      if (newline === -1) break;
      this.onLine(text.slice(start, newline));
      start = newline + 1;
    }
    if (start < text.length) this.tail = text.slice(start);
  }

  private onLine(line: string): void {
    if (line.startsWith(eventPrefix)) {
      this.events += 1;
      return;
    }
    let id: number;
    let isError: boolean;
    if (line.startsWith(okPrefix)) {
      id = idAfter(line, okPrefix.length);
      isError = false;
    } else if (line.startsWith(errorPrefix)) {
      id = idAfter(line, errorPrefix.length);
      isError = true;
    } else {
      const frame = JSON.parse(line) as { type: string; id?: number };
      if (frame.type === "event") return void (this.events += 1);
      id = frame.id ?? -1;
      isError = frame.type === "error";
    }
    const waiter = this.waiters.get(id);
    if (!waiter) return this.onUnmatched(id, line, isError);
    this.waiters.delete(id);
    waiter.done(parseOutcome(line, isError, waiter.wantData, this.serverId));
  }
}

export function parseOutcome(line: string, isError: boolean, wantData: boolean, serverId: number): Outcome {
  if (isError) {
    const frame = JSON.parse(line) as { code: string; message: string };
    return { ok: false, serverId, code: frame.code, message: frame.message };
  }
  return wantData ? { ok: true, serverId, data: (JSON.parse(line) as { data: Record<string, any> }).data } : { ok: true, serverId };
}

export function requestLine(id: number, type: string, fields: Record<string, unknown>): string {
  return `${JSON.stringify({ v: 1, id, type, ...fields })}\n`;
}

/** Sends a ping on a fresh connection; undefined if the server does not answer. */
export async function pingOnce(machine: Machine, timeoutMs = controlRequestTimeoutMs): Promise<ServerStatus | undefined> {
  let link: Link | undefined;
  try {
    link = await Link.open(machine, Math.min(timeoutMs, connectTimeoutMs));
    const outcome = await link.request(1, requestLine(1, "ping", {}), timeoutMs);
    return outcome.ok ? (outcome.data as ServerStatus) : undefined;
  } catch {
    return undefined;
  } finally {
    link?.close();
  }
}

// ---- the primary locator ------------------------------------------------------------

type MachineView = { status: ServerStatus | undefined; answeredAt: number; up: boolean };

/**
 * Keeps one monitor connection per machine. While active (around a failover) or while some client
 * waits for a primary, it pings each machine every ping interval, so clients learn of a new primary
 * within one period; otherwise it sends nothing, so it does not load the servers being measured
 * (a ping is not free: the server answers it from the newest config entry in its log). A machine
 * that stopped answering (frozen) is ignored after locatorStaleMs; among the fresh ones reporting
 * role "primary", the newest epoch wins.
 */
export class PrimaryLocator {
  private readonly views = new Map<number, MachineView>();
  private readonly links = new Map<number, Link>();
  private stopped = false;
  private readonly loops: Promise<void>[] = [];
  private pingIntervalMs = locatorPingIntervalMs;
  private active = false;
  private waiting = 0;

  constructor(private readonly config: ClusterConfig) {
    for (const machine of config.machines) this.views.set(machine.id, { status: undefined, answeredAt: -Infinity, up: false });
  }

  start(): void {
    for (const machine of this.config.machines) this.loops.push(this.monitor(machine));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const link of this.links.values()) link.close("locator stopped");
    await Promise.all(this.loops);
  }

  /** Active: ping all the time (failover trials). Inactive: ping only while a client waits for a primary. */
  setActive(active: boolean): void {
    this.active = active;
  }

  view(id: number): MachineView | undefined {
    return this.views.get(id);
  }

  /** The freshest serving primary, if any. */
  primary(): { id: number; epoch: number } | undefined {
    const now = performance.now();
    let best: { id: number; epoch: number } | undefined;
    for (const [id, view] of this.views) {
      const staleMs = Math.max(locatorStaleMs, 3 * this.pingIntervalMs);
      if (!view.up || !view.status || now - view.answeredAt > staleMs || view.status.role !== "primary") continue;
      if (!best || view.status.epoch > best.epoch) best = { id, epoch: view.status.epoch };
    }
    return best;
  }

  /** Waits until some fresh machine reports itself primary with an epoch of at least minEpoch. */
  async waitForPrimary(minEpoch: number, timeoutMs: number): Promise<{ id: number; epoch: number } | undefined> {
    const deadline = performance.now() + timeoutMs;
    this.waiting += 1;
    try {
      while (!this.stopped && performance.now() < deadline) {
        const found = this.primary();
        if (found && found.epoch >= minEpoch) return found;
        await sleep(failoverRetryMs);
      }
      return undefined;
    } finally {
      this.waiting -= 1;
    }
  }

  private async monitor(machine: Machine): Promise<void> {
    const view = this.views.get(machine.id)!;
    let nextId = 1;
    while (!this.stopped) {
      let link: Link;
      try {
        link = await Link.open(machine, connectTimeoutMs);
      } catch {
        view.up = false;
        await sleep(this.pingIntervalMs);
        continue;
      }
      this.links.set(machine.id, link);
      view.up = true;
      while (!this.stopped && !link.closed) {
        if (!this.active && this.waiting === 0) {
          await sleep(failoverRetryMs);
          continue;
        }
        const id = nextId++;
        const sentAt = performance.now();
        const outcome = await link.request(id, requestLine(id, "ping", {}), locatorPingTimeoutMs);
        if (outcome.ok) {
          view.status = outcome.data as ServerStatus;
          view.answeredAt = performance.now();
        } else {
          link.close(outcome.message);
          break;
        }
        const wait = this.pingIntervalMs - (performance.now() - sentAt);
        if (wait > 0) await sleep(wait);
      }
      view.up = false;
      this.links.delete(machine.id);
      if (!this.stopped) await sleep(this.pingIntervalMs);
    }
  }
}

// ---- the bench client -----------------------------------------------------------------

type Pending = { id: number; line: string; wantData: boolean; firstSentAt: number; resolve: (outcome: Outcome) => void };

export type BenchClientOptions = {
  /** With a locator the client fails over; without one, a lost connection fails its pending writes. */
  locator?: PrimaryLocator;
};

/**
 * One simulated user: one TCP connection to the primary, a stable clientId, a session token.
 * Writes are tracked until answered; after a failover they are re-sent with the same ids.
 */
export class BenchClient {
  private link: Link | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private token: string | undefined;
  private epoch = 0;
  private reconnecting: Promise<void> | undefined;
  private closedByUser = false;
  failovers = 0;
  resent = 0;
  /** Push events received over every link this client had. */
  private eventsOnClosedLinks = 0;

  constructor(
    private readonly config: ClusterConfig,
    readonly clientId: string,
    private readonly options: BenchClientOptions = {},
  ) {}

  get events(): number {
    return this.eventsOnClosedLinks + (this.link?.events ?? 0);
  }

  get serverId(): number | null {
    return this.link && !this.link.closed ? this.link.serverId : null;
  }

  get inflight(): number {
    return this.pending.size;
  }

  /** Age of the oldest unanswered write, in ms (0 if none). */
  oldestPendingMs(now: number): number {
    for (const pending of this.pending.values()) return now - pending.firstSentAt; // Map keeps insertion order
    return 0;
  }

  /** Connects to the primary and says hello (with a locator: whichever server it reports as primary). */
  async connect(serverId: number): Promise<void> {
    if (!this.options.locator) {
      const link = await Link.open(this.machine(serverId));
      const hello = await this.control(link, "hello", { clientId: this.clientId });
      if (!hello.ok) {
        link.close();
        throw new Error(`hello to server ${serverId} failed: ${hello.code} ${hello.message}`);
      }
      this.epoch = Math.max(this.epoch, Number(hello.data?.epoch ?? 0));
      this.adopt(link);
      return;
    }
    this.reconnecting = this.failOver(null);
    try {
      await this.reconnecting;
    } finally {
      this.reconnecting = undefined;
    }
    if (!this.link) throw new Error(`client ${this.clientId} found no primary within ${failoverBudgetMs} ms`);
  }

  /** A write or a read. Resolves with the final outcome (after any failover retries). */
  call(type: string, fields: Record<string, unknown>, wantData = false): Promise<Outcome> {
    const id = this.nextId++;
    return this.send(id, requestLine(id, type, fields), wantData);
  }

  /** Sends a prebuilt request line (from requestLine with an id from nextRequestId). */
  send(id: number, line: string, wantData = false): Promise<Outcome> {
    return new Promise((resolve) => {
      this.pending.set(id, { id, line, wantData, firstSentAt: performance.now(), resolve });
      // While a failover runs there is no link; failOver() sends everything pending once it has one.
      if (this.link && !this.link.closed) this.link.write(line);
    });
  }

  nextRequestId(): number {
    return this.nextId++;
  }

  /** Remembers the session token from a register/login answer, for `auth` after a failover. */
  rememberToken(token: string): void {
    this.token = token;
  }

  /** The caller suspects the primary is frozen: switch if the locator knows a newer primary. */
  suspect(): void {
    const locator = this.options.locator;
    if (!locator || !this.link || this.link.closed || this.reconnecting) return;
    const primary = locator.primary();
    if (primary && primary.id !== this.link.serverId && primary.epoch > this.epoch) this.link.close("a newer primary exists");
  }

  close(): void {
    this.closedByUser = true;
    this.link?.close();
    for (const pending of this.pending.values()) pending.resolve({ ok: false, serverId: 0, code: "BENCH_CLOSED", message: "client closed" });
    this.pending.clear();
  }

  private machine(id: number): Machine {
    const machine = this.config.machines.find((candidate) => candidate.id === id);
    if (!machine) throw new Error(`no machine ${id} in config`);
    return machine;
  }

  private control(link: Link, type: string, fields: Record<string, unknown>): Promise<Outcome> {
    const id = this.nextId++;
    return link.request(id, requestLine(id, type, fields));
  }

  private adopt(link: Link): void {
    this.link = link;
    link.onUnmatched = (id, line, isError) => this.onResponse(link, id, line, isError);
    link.whenClosed((reason) => this.onLinkClosed(link, reason));
  }

  private onResponse(link: Link, id: number, line: string, isError: boolean): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    const outcome = parseOutcome(line, isError, pending.wantData, link.serverId);
    if (!outcome.ok && failoverCodes.has(outcome.code) && this.options.locator) {
      // Not applied (NOT_PRIMARY) or unknown (UNAVAILABLE): keep it pending and retry on the next primary.
      link.close(`${outcome.code} from server ${link.serverId}`);
      return;
    }
    this.pending.delete(id);
    pending.resolve(outcome);
  }

  private onLinkClosed(link: Link, reason: string): void {
    this.eventsOnClosedLinks += link.events;
    if (this.link === link) this.link = undefined;
    if (this.closedByUser) return;
    if (!this.options.locator) {
      for (const pending of this.pending.values()) pending.resolve({ ok: false, serverId: link.serverId, code: "BENCH_CLOSED", message: reason });
      this.pending.clear();
      return;
    }
    if (!this.reconnecting) {
      this.reconnecting = this.failOver(link.serverId).finally(() => {
        this.reconnecting = undefined;
      });
    }
  }

  /** Finds the newest primary, connects, resumes the session and re-sends every pending write. */
  private async failOver(fromServer: number | null): Promise<void> {
    const locator = this.options.locator!;
    if (fromServer !== null) this.failovers += 1;
    const deadline = performance.now() + failoverBudgetMs;
    for (let attempt = 0; attempt < failoverAttemptsMax && performance.now() < deadline && !this.closedByUser; attempt += 1) {
      const target = await locator.waitForPrimary(this.epoch, deadline - performance.now());
      if (!target) break;
      // The server we just lost may still look like the primary for a ping period; prefer waiting a bit.
      if (target.id === fromServer && target.epoch === this.epoch && attempt < 20) {
        await sleep(failoverRetryMs);
        continue;
      }
      let link: Link | undefined;
      try {
        link = await Link.open(this.machine(target.id));
        const hello = await this.control(link, "hello", { clientId: this.clientId });
        if (!hello.ok || hello.data?.role !== "primary") throw new Error(`server ${target.id} is not serving`);
        if (this.token) {
          const auth = await this.control(link, "auth", { token: this.token });
          if (!auth.ok) throw new Error(`auth on server ${target.id}: ${auth.code}`);
        }
        this.epoch = Math.max(this.epoch, Number(hello.data?.epoch ?? 0));
        if (this.closedByUser) return link.close();
        this.adopt(link);
        for (const pending of this.pending.values()) {
          link.write(pending.line);
          this.resent += 1;
        }
        return;
      } catch {
        link?.close();
        await sleep(failoverRetryMs);
      }
    }
    for (const pending of this.pending.values()) pending.resolve({ ok: false, serverId: 0, code: "BENCH_NO_PRIMARY", message: "no primary found within the failover budget" });
    this.pending.clear();
  }
}
