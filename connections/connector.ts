// ClientConnector: the client side of the Chat+ protocol, with failover (like ioredis Sentinel) and
// exactly-once retries (like TigerBeetle client sessions).
//
//  - One persistent monitor connection per machine pings it every pingIntervalMs and records its
//    health, role, epoch and primaryId. A ping timeout on the current primary starts a failover.
//  - One link (TCP connection) to the current primary carries every request and every push event.
//  - Every request gets an id from one increasing counter. An unanswered request is re-sent after a
//    failover with the SAME id (and the same clientId, sent in `hello` on every connection), so the
//    server's replicated log (each write's response is in its entry) applies it at most once.
//  - After a reconnect the connector sends `auth {token}` before anything that needs a session,
//    then replays the push events it missed (events_since) before delivering live ones, in seq order,
//    each exactly once.
//
// The decisions that need no I/O are small pure pieces at the top of this file (failoverCandidates,
// exhaustedError, EventSequencer), so they can be tested without sockets. Sockets and timers live
// in FrameConnection, MachineMonitor and ClientConnector below.
// docs/client.md has the state table.
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import net from "node:net";
import pino, { type Logger } from "pino";
import { z } from "zod";
import { backoffDelayMs, monotonicMs } from "../utils.js";
import {
  pageSizeMax,
  pingIntervalMs,
  pingTimeoutMs,
  protocolVersion,
  redirectsMax,
  requestTimeoutMs,
  retryBackoffMaxMs,
  retryBackoffMinMs,
  retryBudgetMs,
  serverFrameBytesMax,
  type ClusterConfig,
  type Machine,
} from "./consts.js";
import { assert, ChatError, ClosedError, errorCodes, OutcomeUnknownError, ServerError, UnavailableError, type ErrorCode } from "./errors.js";
import { encodeFrame, LineReader } from "./framing.js";
import {
  ChannelView,
  ChatEvent,
  EventBody,
  MessageView,
  Request,
  ServerFrame,
  ServerStatus,
  UnreadSummary,
  writeRequestTypes,
  type ErrorResponse,
  type EventFrame,
  type OkResponse,
  type RequestType,
} from "./schema.js";

// ---- bounds that only the connector uses -------------------------------------------------------

/** User requests on the wire at once. */
export const connectorRequestsInflightMax = 256;
/** User requests waiting for an in-flight slot; more than this are refused with CHAT_ERR_OVERLOADED. */
export const connectorRequestsQueuedMax = 10_000;
/** Live pushes buffered while missed events are fetched after a reconnect. */
export const connectorResumeBufferEventsMax = 50_000;
/** events_since pages fetched in one resume (each up to pageSizeMax events). */
export const connectorResumePagesMax = 400;

// ---- public types ---------------------------------------------------------------------------------

export type ConnectorState = "connecting" | "ready" | "failing-over" | "closed";
export type StateChange = { state: ConnectorState; serverId: number | null; previousServerId: number | null; reason: string };
export type MachineHealth = {
  id: number;
  up: boolean;
  role: ServerStatus["role"] | null;
  epoch: number;
  primaryId: number | null;
  rttMs: number | null;
};
export type Session = { username: string };

export type ConnectorHooks = {
  /** Called right after a user request was written to a server (tests use it to crash that server). */
  onRequestSent?: (info: { id: number; type: RequestType; serverId: number; attempt: number }) => void;
};

export type ConnectorOptions = {
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  requestTimeoutMs?: number;
  redirectsMax?: number;
  retryBackoffMinMs?: number;
  retryBackoffMaxMs?: number;
  retryBudgetMs?: number;
  /** Stable id of this client instance (>= 8 of [A-Za-z0-9_-]); random by default. */
  clientId?: string;
  logger?: Logger;
  random?: () => number;
  hooks?: ConnectorHooks;
};

type ConnectorEvents = {
  state: [change: StateChange];
  /** A push event, delivered exactly once and in seq order. */
  event: [event: ChatEvent];
  /** The session started (login, register) or ended (logout, delete_account, or a token the server no longer accepts). */
  session: [session: Session | null, reason: string];
  /** Ping round trip to the current primary, in ms. */
  lag: [lagMs: number];
};

// ---- pure decisions -------------------------------------------------------------------------------

/**
 * The order in which to try machines when looking for the primary: machines that report role
 * "primary" (newest epoch first), then the hinted machine, then every machine in config (failover)
 * order, reachable ones before unreachable ones, and the machine that just failed last.
 */
export function failoverCandidates(machines: readonly Machine[], health: ReadonlyMap<number, MachineHealth>, failedId: number | null, hintId: number | null): number[] {
  const order = machines.map((machine) => machine.id);
  const position = (id: number) => order.indexOf(id);
  const primaries = order
    .filter((id) => health.get(id)?.up && health.get(id)?.role === "primary")
    .sort((a, b) => (health.get(b)!.epoch - health.get(a)!.epoch) || position(a) - position(b));
  const rank = (id: number) => (id === failedId ? 2 : health.get(id)?.up === false ? 1 : 0);
  const rest = [...order].sort((a, b) => rank(a) - rank(b) || position(a) - position(b));
  const candidates = [...primaries, ...(hintId !== null && order.includes(hintId) ? [hintId] : []), ...rest];
  return candidates.filter((id, index) => candidates.indexOf(id) === index);
}

/** The typed error for a request whose retry budget ran out. */
export function exhaustedError(request: { type: RequestType; id: number; write: boolean; unanswered: boolean; onWire: boolean }, budgetMs: number, cause?: unknown): ChatError {
  if (request.write && (request.unanswered || request.onWire)) {
    return new OutcomeUnknownError(`${request.type} #${request.id} was sent but not answered within ${budgetMs} ms; it was applied at most once`, { cause });
  }
  return new UnavailableError(`no primary answered ${request.type}${request.id ? ` #${request.id}` : ""} within ${budgetMs} ms; it was not applied`, { cause });
}

/** Identity of an event within its seq: the same event may arrive live and again from events_since. */
export function eventKey(event: EventBody): string {
  switch (event.kind) {
    // The server names DM conversations differently in pushes and in events_since; the ids are stable.
    case "message":
      return `message:${event.message.id}`;
    case "message_deleted":
      return `message_deleted:${event.messageId}`;
    default:
      return canonicalJson(event);
  }
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value as Record<string, unknown>)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
    return `{${entries.join(",")}}`;
  }
  return JSON.stringify(value);
}

/**
 * Orders push events and drops duplicates. Seqs only grow, several events can share one seq, and
 * after a reconnect the same event can come both from events_since and live. Live events that
 * arrive while a resume runs are buffered, then merged with the resumed ones in seq order.
 */
export class EventSequencer {
  private lastSeq = 0;
  private keysAtLastSeq = new Set<string>();
  private resuming = false;
  private buffer: ChatEvent[] = [];
  private overflowed = false;

  constructor(private readonly bufferMax: number) {}

  /** A new session: pushes start after `seq`. */
  reset(seq: number): void {
    this.lastSeq = seq;
    this.keysAtLastSeq = new Set();
    this.resuming = false;
    this.buffer = [];
    this.overflowed = false;
  }

  /**
   * events_since must start after this seq. One before the last delivered event's own seq: the link
   * may have dropped after some of the events of that entry arrived and before the rest did (and a
   * resume that overflowed dropped live events at that seq). The ones already delivered are
   * recognised by content and not delivered twice.
   */
  get resumeFrom(): number {
    return this.keysAtLastSeq.size > 0 ? this.lastSeq - 1 : this.lastSeq;
  }

  /** The last resume dropped buffered live events; another resume fetches them. */
  get needsAnotherResume(): boolean {
    return this.overflowed;
  }

  /** Starts buffering live events. Idempotent: a resume begun before `auth` keeps what it buffered. */
  beginResume(): void {
    if (this.resuming) return;
    this.resuming = true;
    this.overflowed = false;
  }

  /** Returns the events to deliver now. */
  onLive(event: ChatEvent): ChatEvent[] {
    if (!this.resuming) return this.admit([event]);
    if (this.buffer.length >= this.bufferMax) {
      // Every dropped event has a seq above the coming upTo or is also in events_since: a second resume covers it.
      this.overflowed = true;
      return [];
    }
    this.buffer.push(event);
    return [];
  }

  /**
   * One events_since page, in seq order, while the resume runs: delivered at once, so a long backlog
   * is neither held in memory nor lost when the link drops halfway (the next resume goes on from it).
   */
  onResumedPage(events: ChatEvent[]): ChatEvent[] {
    assert(this.resuming, "a resumed page without beginResume");
    return this.admit(events);
  }

  /** The resume reached `upTo`: returns the buffered live events still to deliver. */
  endResume(resumed: ChatEvent[], upTo: number): ChatEvent[] {
    assert(this.resuming, "endResume without beginResume");
    const merged = [...resumed, ...this.buffer].map((event, order) => ({ event, order }));
    merged.sort((a, b) => a.event.seq - b.event.seq || a.order - b.order);
    this.buffer = [];
    this.resuming = false;
    const delivered = this.admit(merged.map((item) => item.event));
    if (upTo > this.lastSeq) {
      this.lastSeq = upTo;
      this.keysAtLastSeq = new Set();
    }
    return delivered;
  }

  private admit(events: ChatEvent[]): ChatEvent[] {
    const delivered: ChatEvent[] = [];
    for (const event of events) {
      if (event.seq < this.lastSeq) continue;
      const key = eventKey(event.event);
      if (event.seq === this.lastSeq && this.keysAtLastSeq.has(key)) continue;
      if (event.seq > this.lastSeq) {
        this.lastSeq = event.seq;
        this.keysAtLastSeq = new Set();
      }
      this.keysAtLastSeq.add(key);
      delivered.push(event);
    }
    return delivered;
  }
}

// ---- one TCP connection speaking the frame protocol -------------------------------------------------

type Waiter = { resolve: (frame: OkResponse | ErrorResponse) => void; reject: (error: Error) => void; timer: NodeJS.Timeout };

class LinkClosedError extends Error {}

class FrameConnection {
  closed = false;
  closeReason = "";
  onEvent: (frame: EventFrame) => void = () => {};
  /** A push of a kind this connector does not know (unknownEventKind): skipped. */
  onUnknownEvent: (kind: string) => void = () => {};
  /** Responses nobody awaits through call(): the connector's user requests. */
  onResponse: (frame: OkResponse | ErrorResponse) => void = () => {};
  private readonly waiters = new Map<number, Waiter>();
  private readonly closeListeners: ((reason: string) => void)[] = [];

  private constructor(
    readonly machine: Machine,
    private readonly socket: net.Socket,
    private readonly logger: Logger,
  ) {
    socket.setNoDelay(true);
    const reader = new LineReader(serverFrameBytesMax, {
      onFrame: (line) => this.onLine(line),
      onOversize: () => this.close(`server sent a frame larger than ${serverFrameBytesMax} bytes`),
    });
    socket.on("data", (data) => reader.push(data));
    socket.on("error", (error) => this.close(`socket error: ${error.message}`));
    socket.on("close", () => this.close("connection closed by server"));
  }

  static open(machine: Machine, timeoutMs: number, logger: Logger): Promise<FrameConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: machine.host, port: machine.clientPort });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connecting to server ${machine.id} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      const onError = (error: Error) => {
        clearTimeout(timer);
        socket.destroy();
        reject(error);
      };
      socket.once("error", onError);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.off("error", onError);
        resolve(new FrameConnection(machine, socket, logger));
      });
    });
  }

  send(frame: Record<string, unknown>): void {
    if (!this.closed) this.socket.write(encodeFrame(frame));
  }

  /** Sends a request and resolves with its response (ok or error); rejects on timeout or close. */
  call(frame: { id: number } & Record<string, unknown>, timeoutMs: number): Promise<OkResponse | ErrorResponse> {
    if (this.closed) return Promise.reject(new LinkClosedError(this.closeReason));
    assert(!this.waiters.has(frame.id), `request id ${frame.id} awaited twice on one connection`);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(frame.id);
        reject(new Error(`server ${this.machine.id} did not answer ${String(frame.type)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(frame.id, { resolve, reject, timer });
      this.send(frame);
    });
  }

  whenClosed(listener: (reason: string) => void): void {
    if (this.closed) listener(this.closeReason);
    else this.closeListeners.push(listener);
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    this.socket.destroy();
    for (const waiter of this.waiters.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new LinkClosedError(reason));
    }
    this.waiters.clear();
    for (const listener of this.closeListeners.splice(0)) listener(reason);
  }

  private onLine(line: string): void {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      return this.close("server sent a frame that is not JSON");
    }
    const frameFields = raw as { type?: unknown; event?: unknown } | null;
    const unknownKind = frameFields?.type === "event" ? unknownEventKind(frameFields.event) : undefined;
    if (unknownKind !== undefined) return this.onUnknownEvent(unknownKind);
    const parsed = ServerFrame.safeParse(raw);
    if (!parsed.success) {
      this.logger.warn({ server: this.machine.id, issues: parsed.error.issues.slice(0, 3) }, "server frame does not match the protocol");
      return this.close("server sent a frame that does not match the protocol");
    }
    const frame = parsed.data;
    if (frame.type === "event") return this.onEvent(frame);
    const waiter = this.waiters.get(frame.id);
    if (waiter) {
      this.waiters.delete(frame.id);
      clearTimeout(waiter.timer);
      waiter.resolve(frame);
      return;
    }
    if (frame.id === 0 && frame.type === "error") {
      this.logger.warn({ server: this.machine.id, code: frame.code, message: frame.message }, "server rejected a frame");
      return;
    }
    this.onResponse(frame);
  }
}

// ---- a cancellable pause -----------------------------------------------------------------------------

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

// ---- per-machine health monitor ---------------------------------------------------------------------

type MonitorTiming = { pingIntervalMs: number; pingTimeoutMs: number; retryBackoffMinMs: number };

/**
 * Keeps one connection to one machine and pings it. Ping ids come from the monitor's own counter:
 * pings are never writes, so they need no place in the connector's dedup-window accounting.
 */
class MachineMonitor {
  readonly health: MachineHealth;
  private connection: FrameConnection | null = null;
  private nextId = 1;

  constructor(
    private readonly machine: Machine,
    private readonly clientId: string,
    private readonly timing: MonitorTiming,
    private readonly signal: AbortSignal,
    private readonly random: () => number,
    private readonly logger: Logger,
    private readonly onStatus: (id: number, status: ServerStatus, rttMs: number) => void,
    private readonly onDown: (id: number, reason: string) => void,
  ) {
    this.health = { id: machine.id, up: false, role: null, epoch: 0, primaryId: null, rttMs: null };
  }

  start(): void {
    void this.run();
  }

  stop(): void {
    this.connection?.close("monitor stopped");
  }

  private async run(): Promise<void> {
    for (let failures = 0; !this.signal.aborted; ) {
      let reason = "unreachable";
      try {
        const connection = await FrameConnection.open(this.machine, this.timing.pingTimeoutMs, this.logger);
        this.connection = connection;
        if (this.signal.aborted) break;
        await this.ping(connection, { type: "hello", clientId: this.clientId });
        failures = 0;
        while (!this.signal.aborted && !connection.closed) {
          await pause(this.timing.pingIntervalMs, this.signal);
          if (this.signal.aborted) break;
          await this.ping(connection, { type: "ping" });
        }
        reason = connection.closeReason || "connection lost";
      } catch (error) {
        reason = (error as Error).message;
      }
      this.connection?.close(reason);
      this.connection = null;
      if (this.signal.aborted) break;
      failures += 1;
      this.markDown(reason);
      await pause(backoffDelayMs(failures, this.timing.retryBackoffMinMs, this.timing.pingIntervalMs * 2, this.random), this.signal);
    }
    this.connection?.close("monitor stopped");
  }

  private async ping(connection: FrameConnection, fields: Record<string, unknown>): Promise<void> {
    const started = monotonicMs();
    const reply = await connection.call({ v: protocolVersion, id: this.nextId++, ...fields }, this.timing.pingTimeoutMs);
    if (reply.type !== "ok") throw new Error(`${String(fields.type)} answered ${reply.code}`);
    const status = ServerStatus.safeParse(reply.data);
    if (!status.success) throw new Error("ping answer is not a server status");
    const rttMs = monotonicMs() - started;
    Object.assign(this.health, { up: true, role: status.data.role, epoch: status.data.epoch, primaryId: status.data.primaryId, rttMs });
    this.onStatus(this.machine.id, status.data, rttMs);
  }

  private markDown(reason: string): void {
    const wasUp = this.health.up;
    Object.assign(this.health, { up: false, role: null, rttMs: null });
    if (wasUp) this.logger.info({ server: this.machine.id, reason }, "server down");
    this.onDown(this.machine.id, reason);
  }
}

// ---- the connector ----------------------------------------------------------------------------------

type PendingRequest = {
  /** 0 until admitted (while waiting for an in-flight slot). */
  id: number;
  type: RequestType;
  fields: Record<string, unknown>;
  write: boolean;
  /** The connection it was last written to and still awaits an answer on; null when it must be (re)sent. */
  sentOn: FrameConnection | null;
  attempts: number;
  redirects: number;
  /** A write that was sent and lost its answer: it may have been applied. */
  unanswered: boolean;
  lastError: unknown;
  attemptTimer: NodeJS.Timeout | null;
  retryTimer: NodeJS.Timeout | null;
  budgetTimer: NodeJS.Timeout | null;
  resolve: (data: Record<string, unknown>) => void;
  reject: (error: Error) => void;
};

type Settings = Required<Omit<ConnectorOptions, "clientId" | "logger" | "random" | "hooks">>;

const clientIdPattern = /^[A-Za-z0-9_-]{8,64}$/;
/** Requests the connector sends itself; the application cannot. */
const connectorOwnedTypes = new Set<RequestType>(["hello", "events_since"]);

/** An events_since page; each event is checked once those of unknown kinds are left out (unknownEventKind). */
const EventsSincePage = z.object({ events: z.array(z.object({ seq: z.number().int(), event: z.unknown() })), more: z.boolean(), upTo: z.number().int() });
const KnownEvents = z.array(ChatEvent);

/** The event kinds this connector knows; a newer server may push others. */
const knownEventKinds: ReadonlySet<string> = new Set(EventBody.options.map((option) => option.shape.kind.value));

/**
 * The kind of an event this connector does not know, or undefined. Such an event is skipped, not a
 * protocol error: a newer server can add kinds, and closing the link would loop on a rolling upgrade
 * (reconnect, resume, the same event, close again). A known kind is still checked in full.
 */
export function unknownEventKind(event: unknown): string | undefined {
  const kind = (event as { kind?: unknown } | null)?.kind;
  return typeof kind === "string" && !knownEventKinds.has(kind) ? kind : undefined;
}
/** What the connector itself needs from a register, login or auth answer. */
const SessionAnswer = z.object({ token: z.string(), username: z.string(), seq: z.number().int().min(0) });
/** Requests whose success ends this connector's session. */
const endsSession = new Set<RequestType>(["logout", "delete_account"]);

/** The data of an answer, checked against what the protocol promises for it. */
function answerOf<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new ChatError(errorCodes.BAD_RESPONSE, `the server's ${what} answer does not match the protocol: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

export class ClientConnector extends EventEmitter<ConnectorEvents> {
  readonly clientId: string;
  private readonly settings: Settings;
  private readonly machines: readonly Machine[];
  private readonly logger: Logger;
  private readonly random: () => number;
  private readonly hooks: ConnectorHooks;
  private readonly stopper = new AbortController();
  private readonly monitors = new Map<number, MachineMonitor>();
  private readonly sequencer = new EventSequencer(connectorResumeBufferEventsMax);

  private currentState: ConnectorState = "connecting";
  private currentServerId: number | null = null;
  private lastServerId: number | null = null;
  private everReady = false;
  private closed = false;
  private link: FrameConnection | null = null;
  private linkEpoch = 0;
  private discovery: Promise<void> | null = null;
  private discoveryHint: number | null = null;
  private nextRequestId = 1;
  /** Admitted requests in id order (Map keeps insertion order, and ids only grow). */
  private readonly pending = new Map<number, PendingRequest>();
  private readonly waiting: PendingRequest[] = [];
  private token: string | null = null;
  private username: string | null = null;
  private lag: number | null = null;

  constructor(config: ClusterConfig, options: ConnectorOptions = {}) {
    super();
    assert(config.machines.length > 0, "the cluster config lists no machines");
    this.machines = config.machines;
    this.settings = {
      pingIntervalMs: options.pingIntervalMs ?? pingIntervalMs,
      pingTimeoutMs: options.pingTimeoutMs ?? pingTimeoutMs,
      requestTimeoutMs: options.requestTimeoutMs ?? requestTimeoutMs,
      redirectsMax: options.redirectsMax ?? redirectsMax,
      retryBackoffMinMs: options.retryBackoffMinMs ?? retryBackoffMinMs,
      retryBackoffMaxMs: options.retryBackoffMaxMs ?? retryBackoffMaxMs,
      retryBudgetMs: options.retryBudgetMs ?? retryBudgetMs,
    };
    for (const [name, value] of Object.entries(this.settings)) {
      assert(Number.isFinite(value) && value >= 0, `connector option ${name} must be a non-negative number`);
    }
    this.clientId = options.clientId ?? randomBytes(12).toString("base64url");
    assert(clientIdPattern.test(this.clientId), "clientId must be 8 to 64 of [A-Za-z0-9_-]");
    this.random = options.random ?? Math.random;
    this.hooks = options.hooks ?? {};
    this.logger = (options.logger ?? pino({ level: "silent" })).child({ component: "connector" }); // never the clientId: it is a secret (docs/protocol.md §13)
  }

  // ---- observation ----------------------------------------------------------------------------------

  get state(): ConnectorState {
    return this.currentState;
  }
  /** The server the connector is on while ready, else null. */
  get serverId(): number | null {
    return this.currentServerId;
  }
  /** Last ping round trip to the current primary, in ms. */
  get lagMs(): number | null {
    return this.lag;
  }
  get session(): Session | null {
    return this.username ? { username: this.username } : null;
  }
  /** What the monitors last saw of every machine, in config order. */
  health(): MachineHealth[] {
    return this.machines.map((machine) => ({ ...(this.monitors.get(machine.id)?.health ?? { id: machine.id, up: false, role: null, epoch: 0, primaryId: null, rttMs: null }) }));
  }

  // ---- lifecycle ------------------------------------------------------------------------------------

  /** Starts the monitors and resolves once a primary is found; rejects with UnavailableError after retryBudgetMs (and keeps trying). */
  async connect(): Promise<void> {
    if (this.closed) throw new ClosedError();
    this.startMonitors();
    if (this.currentState === "ready") return;
    void this.rediscover("connect");
    await this.waitForReady(this.settings.retryBudgetMs);
  }

  /** Resolves when the connector is ready; rejects with UnavailableError after `timeoutMs`. */
  waitForReady(timeoutMs: number): Promise<void> {
    if (this.closed) return Promise.reject(new ClosedError());
    if (this.currentState === "ready") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onState = (change: StateChange) => {
        if (change.state === "ready") finish(null);
        else if (change.state === "closed") finish(new ClosedError());
      };
      const timer = setTimeout(() => finish(new UnavailableError(`no primary found within ${timeoutMs} ms`)), timeoutMs);
      const finish = (error: Error | null) => {
        clearTimeout(timer);
        this.off("state", onState);
        if (error) reject(error);
        else resolve();
      };
      this.on("state", onState);
    });
  }

  /** Stops everything. Requests still pending reject with ClosedError. Does not log out (the session stays valid). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopper.abort();
    for (const monitor of this.monitors.values()) monitor.stop();
    if (this.link) this.dropLink(this.link, "closed by owner");
    for (const request of [...this.waiting, ...this.pending.values()]) this.finish(request, new ClosedError());
    this.setState("closed", null, "closed by owner");
  }

  // ---- requests -------------------------------------------------------------------------------------

  /**
   * Sends a request to the primary and resolves with the response data. Retries across failovers
   * with the same id; rejects with ServerError (the server's code), UnavailableError,
   * OutcomeUnknownError, ClosedError, or ChatError(CHAT_ERR_BAD_REQUEST) for fields that fail the schema.
   */
  request(type: RequestType, fields: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new ClosedError());
    if (connectorOwnedTypes.has(type)) return Promise.reject(new ChatError(errorCodes.BAD_REQUEST, `${type} is sent by the connector itself`));
    const checked = Request.safeParse({ ...fields, v: protocolVersion, id: 1, type });
    if (!checked.success) {
      const problems = checked.error.issues.slice(0, 5).map((issue) => `${issue.path.join(".") || "(request)"}: ${issue.message}`);
      return Promise.reject(new ChatError(errorCodes.BAD_REQUEST, problems.join("; ")));
    }
    return new Promise((resolve, reject) => {
      const request: PendingRequest = {
        id: 0,
        type,
        fields,
        write: writeRequestTypes.has(type),
        sentOn: null,
        attempts: 0,
        redirects: 0,
        unanswered: false,
        lastError: undefined,
        attemptTimer: null,
        retryTimer: null,
        budgetTimer: null,
        resolve,
        reject,
      };
      request.budgetTimer = setTimeout(() => this.onBudgetExhausted(request), this.settings.retryBudgetMs);
      if (this.waiting.length >= connectorRequestsQueuedMax) {
        return this.finish(request, new ChatError(errorCodes.OVERLOADED, `more than ${connectorRequestsQueuedMax} requests waiting`));
      }
      this.waiting.push(request);
      this.admitWaiting();
      if (this.currentState !== "ready" && !this.discovery && this.monitors.size === 0) void this.connect().catch(() => {});
    });
  }

  async register(username: string, password: string): Promise<LoginResult> {
    return (await this.request("register", { username, password })) as LoginResult;
  }
  async login(username: string, password: string): Promise<LoginResult> {
    return (await this.request("login", { username, password })) as LoginResult;
  }
  /** Resumes a session from a token (e.g. saved by a previous run). */
  async auth(token: string): Promise<LoginResult> {
    return (await this.request("auth", { token })) as LoginResult;
  }
  async logout(): Promise<void> {
    await this.request("logout");
  }
  async deleteAccount(password: string): Promise<void> {
    await this.request("delete_account", { password });
  }
  async sendDm(to: string, body: string): Promise<MessageView> {
    return answerOf(MessageView, (await this.request("send_dm", { to, body })).message, "send_dm");
  }
  async post(channel: string, body: string): Promise<MessageView> {
    return answerOf(MessageView, (await this.request("post", { channel, body })).message, "post");
  }
  async history(conversation: string, options: { before?: number; after?: number; limit?: number } = {}): Promise<MessageView[]> {
    return answerOf(z.array(MessageView), (await this.request("history", { conversation, ...options })).messages, "history");
  }
  async readUndelivered(limit?: number): Promise<{ messages: MessageView[]; remaining: number }> {
    const data = await this.request("read_undelivered", limit === undefined ? {} : { limit });
    return { messages: answerOf(z.array(MessageView), data.messages, "read_undelivered"), remaining: Number(data.remaining ?? 0) };
  }
  async listUsers(pattern = "*", after?: string, limit?: number): Promise<{ users: { username: string; online: boolean }[]; next: string | null }> {
    return (await this.request("list_users", { pattern, ...(after ? { after } : {}), ...(limit ? { limit } : {}) })) as { users: { username: string; online: boolean }[]; next: string | null };
  }
  async listChannels(pattern = "*", after?: string, limit?: number): Promise<{ channels: ChannelView[]; next: string | null }> {
    const data = await this.request("list_channels", { pattern, ...(after ? { after } : {}), ...(limit ? { limit } : {}) });
    return { channels: answerOf(z.array(ChannelView), data.channels, "list_channels"), next: (data.next as string | null) ?? null };
  }
  async createChannel(channel: string, topic = ""): Promise<void> {
    await this.request("create_channel", { channel, topic });
  }
  async joinChannel(channel: string): Promise<{ channel: string; topic: string }> {
    return (await this.request("join_channel", { channel })) as { channel: string; topic: string };
  }
  async leaveChannel(channel: string): Promise<void> {
    await this.request("leave_channel", { channel });
  }
  async setTopic(channel: string, topic: string): Promise<void> {
    await this.request("set_topic", { channel, topic });
  }
  async deleteChannel(channel: string): Promise<void> {
    await this.request("delete_channel", { channel });
  }
  async deleteMessage(messageId: number): Promise<void> {
    await this.request("delete_message", { messageId });
  }
  async markRead(conversation: string, messageId: number): Promise<void> {
    await this.request("mark_read", { conversation, messageId });
  }
  async unread(): Promise<UnreadSummary> {
    return answerOf(UnreadSummary, await this.request("unread"), "unread");
  }

  /** Moves waiting requests into flight while the in-flight bound allows. */
  private admitWaiting(): void {
    while (this.waiting.length > 0 && this.pending.size < connectorRequestsInflightMax) {
      // No window to respect: the server keeps the response of every write in its log entry.
      const request = this.waiting.shift()!;
      request.id = this.allocateId();
      this.pending.set(request.id, request);
      this.sendPending(request);
    }
  }

  private allocateId(): number {
    assert(this.nextRequestId < Number.MAX_SAFE_INTEGER, "request ids exhausted");
    return this.nextRequestId++;
  }

  private sendPending(request: PendingRequest): void {
    const link = this.link;
    if (this.currentState !== "ready" || !link || link.closed || request.sentOn || request.retryTimer) return;
    request.sentOn = link;
    request.attempts += 1;
    // The envelope last: a caller's fields can never replace the id (exactly-once) or the type.
    link.send({ ...request.fields, v: protocolVersion, id: request.id, type: request.type });
    request.attemptTimer = setTimeout(() => this.onAttemptTimeout(request, link), this.settings.requestTimeoutMs);
    this.hooks.onRequestSent?.({ id: request.id, type: request.type, serverId: link.machine.id, attempt: request.attempts });
  }

  private flushPending(): void {
    for (const request of this.pending.values()) this.sendPending(request);
  }

  private onAttemptTimeout(request: PendingRequest, link: FrameConnection): void {
    request.attemptTimer = null;
    if (request.sentOn !== link || this.closed) return;
    this.logger.warn({ id: request.id, type: request.type, server: link.machine.id }, "request timed out; failing over");
    void this.rediscover(`request ${request.type} #${request.id} not answered by server ${link.machine.id} within ${this.settings.requestTimeoutMs} ms`);
  }

  private onBudgetExhausted(request: PendingRequest): void {
    request.budgetTimer = null;
    const error = exhaustedError({ type: request.type, id: request.id, write: request.write, unanswered: request.unanswered, onWire: request.sentOn !== null }, this.settings.retryBudgetMs, request.lastError);
    this.logger.warn({ id: request.id, type: request.type, code: error.code }, "retry budget exhausted");
    this.finish(request, error);
  }

  private finish(request: PendingRequest, outcome: Error | Record<string, unknown>): void {
    for (const timer of [request.attemptTimer, request.retryTimer, request.budgetTimer]) if (timer) clearTimeout(timer);
    request.attemptTimer = request.retryTimer = request.budgetTimer = null;
    request.sentOn = null;
    const position = this.waiting.indexOf(request);
    if (position >= 0) this.waiting.splice(position, 1);
    const wasPending = this.pending.delete(request.id);
    if (outcome instanceof Error) request.reject(outcome);
    else request.resolve(outcome);
    if (wasPending && !this.closed) this.admitWaiting();
  }

  private onResponse(link: FrameConnection, frame: OkResponse | ErrorResponse): void {
    const request = this.pending.get(frame.id);
    if (!request || request.sentOn !== link) {
      this.logger.debug({ id: frame.id, server: link.machine.id }, "response to no pending request (already answered or re-sent)");
      return;
    }
    if (request.attemptTimer) clearTimeout(request.attemptTimer);
    request.attemptTimer = null;
    request.sentOn = null;
    if (frame.type === "ok") {
      const problem = this.onSessionResponse(request.type, frame.data);
      return this.finish(request, problem ?? frame.data);
    }
    const error = new ServerError(frame.code as ErrorCode, frame.message, frame.primary, frame.retryAfterMs);
    request.lastError = error;
    if (endsSession.has(request.type) && request.unanswered && (frame.code === errorCodes.NOT_LOGGED_IN || frame.code === errorCodes.BAD_SESSION)) {
      // A retry whose first attempt ended the session cannot be answered with the session it
      // needed: the logout or deletion has taken effect (docs/protocol.md §4).
      this.logger.info({ id: request.id, type: request.type, code: frame.code }, "retried request found its session ended: it took effect");
      this.endSession(request.type);
      return this.finish(request, {});
    }
    if (frame.code === errorCodes.NOT_PRIMARY) return this.onNotPrimary(request, link, error);
    if (frame.code === errorCodes.UNAVAILABLE || frame.code === errorCodes.OVERLOADED) return this.onTransientError(request, error);
    this.finish(request, error);
  }

  /**
   * Not applied; the request waits for the next primary. Its first redirectsMax answers send the
   * search to the server the hint names; after that the whole list is searched (the retry budget
   * still bounds the request).
   */
  private onNotPrimary(request: PendingRequest, link: FrameConnection, error: ServerError): void {
    request.redirects += 1;
    const hinted = error.primary && error.primary.id !== link.machine.id ? error.primary.id : null;
    const hint = request.redirects <= this.settings.redirectsMax ? hinted : null;
    this.logger.info({ id: request.id, server: link.machine.id, hint, redirects: request.redirects }, "not primary; rediscovering");
    if (this.link === link) void this.rediscover(`server ${link.machine.id} is not the primary`, hint);
  }

  /**
   * CHAT_ERR_UNAVAILABLE (the server lost its primacy with this write pending: outcome unknown) or
   * CHAT_ERR_OVERLOADED (not applied): resend with the same id after a backoff.
   */
  private onTransientError(request: PendingRequest, error: ServerError): void {
    if (request.write && error.code === errorCodes.UNAVAILABLE) request.unanswered = true;
    const delay = backoffDelayMs(request.attempts, this.settings.retryBackoffMinMs, this.settings.retryBackoffMaxMs, this.random);
    this.logger.info({ id: request.id, delay, code: error.code }, "transient server error; retrying");
    request.retryTimer = setTimeout(() => {
      request.retryTimer = null;
      this.sendPending(request);
    }, delay);
  }

  /** Remembers the session token (never the password) and where pushes start; an error if the answer lacks them. */
  private onSessionResponse(type: RequestType, data: Record<string, unknown>): ChatError | undefined {
    if (type === "login" || type === "register" || type === "auth") {
      const session = SessionAnswer.safeParse(data);
      if (!session.success) {
        this.logger.warn({ type, issues: session.error.issues.slice(0, 3) }, "session answer does not match the protocol");
        return new ChatError(errorCodes.BAD_RESPONSE, `the server's ${type} answer lacks its token, username or seq`);
      }
      this.token = session.data.token;
      this.username = session.data.username;
      this.sequencer.reset(session.data.seq);
      this.emit("session", { username: session.data.username }, type);
    } else if (endsSession.has(type)) {
      this.endSession(type);
    }
    return undefined;
  }

  private endSession(reason: string): void {
    const had = this.username !== null;
    this.token = null;
    this.username = null;
    this.sequencer.reset(0);
    if (had) this.emit("session", null, reason);
  }

  // ---- discovery and failover ----------------------------------------------------------------------

  private startMonitors(): void {
    if (this.monitors.size > 0 || this.closed) return;
    for (const machine of this.machines) {
      const monitor = new MachineMonitor(
        machine,
        this.clientId,
        this.settings,
        this.stopper.signal,
        this.random,
        this.logger,
        (id, status, rttMs) => this.onMachineStatus(id, status, rttMs),
        (id, reason) => this.onMachineDown(id, reason),
      );
      this.monitors.set(machine.id, monitor);
      monitor.start();
    }
  }

  private onMachineStatus(id: number, status: ServerStatus, rttMs: number): void {
    const link = this.link;
    if (!link || this.currentState !== "ready") return;
    if (id === link.machine.id) {
      this.lag = rttMs;
      this.emit("lag", rttMs);
      return;
    }
    if (status.role === "primary" && status.epoch > this.linkEpoch) {
      void this.rediscover(`server ${id} is primary at epoch ${status.epoch}, newer than server ${link.machine.id}'s ${this.linkEpoch}`, id);
    }
  }

  private onMachineDown(id: number, reason: string): void {
    if (this.link && this.link.machine.id === id && this.currentState === "ready") {
      void this.rediscover(`lost contact with primary ${id} (${reason})`);
    }
  }

  /** Finds the primary again. Concurrent calls share one run. */
  private rediscover(reason: string, hintId: number | null = null): Promise<void> {
    if (hintId !== null) this.discoveryHint = hintId;
    if (this.closed) return Promise.resolve();
    if (!this.discovery) {
      const run = this.runDiscovery(reason);
      this.discovery = run;
      run
        .finally(() => {
          if (this.discovery === run) this.discovery = null;
        })
        .catch(() => {});
    }
    return this.discovery;
  }

  private async runDiscovery(reason: string): Promise<void> {
    const failedId = this.link?.machine.id ?? null;
    if (this.link) this.dropLink(this.link, reason);
    this.logger.info({ reason, failedId }, "looking for the primary");
    this.setState(this.everReady ? "failing-over" : "connecting", null, reason);
    for (let attempt = 1; !this.closed; attempt += 1) {
      let found: Awaited<ReturnType<ClientConnector["findPrimary"]>> = null;
      try {
        found = await this.findPrimary(failedId);
      } catch (error) {
        // A bug here must not end the search (nor the process, as an unhandled rejection).
        this.logger.error({ err: error }, "looking for the primary failed; trying again");
      }
      if (found && (await this.establish(found.connection, found.status))) return;
      if (this.closed) return;
      await pause(backoffDelayMs(attempt, this.settings.retryBackoffMinMs, this.settings.retryBackoffMaxMs, this.random), this.stopper.signal);
    }
  }

  /** One pass over the candidates; follows primaryId hints from backups (bounded by redirectsMax). */
  private async findPrimary(failedId: number | null): Promise<{ connection: FrameConnection; status: ServerStatus } | null> {
    const healthById = new Map(this.health().map((health) => [health.id, health]));
    const queue = failoverCandidates(this.machines, healthById, failedId, this.discoveryHint);
    this.discoveryHint = null;
    const tried = new Set<number>();
    let redirects = 0;
    while (queue.length > 0 && !this.closed) {
      const id = queue.shift()!;
      if (tried.has(id)) continue;
      tried.add(id);
      const probe = await this.probe(id);
      if ("connection" in probe) return probe;
      const next = probe.primaryId;
      // A hint is followed only to a machine in our config: the server's list may be newer than ours.
      const known = next !== null && healthById.has(next);
      if (next !== null && known && !tried.has(next) && healthById.get(next)?.up !== false && redirects < this.settings.redirectsMax) {
        redirects += 1;
        queue.unshift(next);
      }
    }
    return null;
  }

  /** Connects to a machine and says hello; keeps the connection only if the machine is the primary. */
  private async probe(id: number): Promise<{ connection: FrameConnection; status: ServerStatus } | { primaryId: number | null }> {
    const machine = this.machines.find((candidate) => candidate.id === id);
    assert(machine, `machine ${id} is in the config`);
    let connection: FrameConnection | undefined;
    try {
      connection = await FrameConnection.open(machine, this.settings.pingTimeoutMs, this.logger);
      const reply = await connection.call({ v: protocolVersion, id: this.allocateId(), type: "hello", clientId: this.clientId }, this.settings.pingTimeoutMs);
      if (reply.type !== "ok") throw new Error(`hello answered ${reply.code}`);
      const status = ServerStatus.parse(reply.data);
      if (status.role === "primary" && !this.closed) return { connection, status };
      connection.close(`server ${id} is ${status.role}`);
      return { primaryId: status.primaryId !== id ? status.primaryId : null };
    } catch (error) {
      connection?.close((error as Error).message);
      this.logger.debug({ server: id, err: (error as Error).message }, "probe failed");
      return { primaryId: null };
    }
  }

  /** Adopts a connection to the primary: auth, resume pushes, then ready and re-send. False if it failed. */
  private async establish(connection: FrameConnection, status: ServerStatus): Promise<boolean> {
    this.link = connection;
    this.linkEpoch = status.epoch;
    connection.onEvent = (frame) => this.onPush(connection, frame);
    connection.onUnknownEvent = (kind) => this.noteUnknownEvent(kind);
    connection.onResponse = (frame) => this.onResponse(connection, frame);
    connection.whenClosed((reason) => this.onLinkClosed(connection, reason));
    try {
      // Buffer pushes from the moment the session is attached (auth), or one could move lastSeq past
      // the events the resume below must still fetch.
      if (this.token) {
        this.sequencer.beginResume();
        await this.authenticate(connection);
      }
      if (this.username) {
        do await this.resumeEvents(connection);
        while (this.sequencer.needsAnotherResume && !connection.closed);
      }
    } catch (error) {
      this.logger.warn({ server: connection.machine.id, err: (error as Error).message }, "could not set up the link");
      if (this.link === connection) this.dropLink(connection, (error as Error).message);
      return false;
    }
    if (connection.closed || this.link !== connection || this.closed) return false;
    this.lag = this.monitors.get(connection.machine.id)?.health.rttMs ?? null;
    this.everReady = true;
    // This run is over: a link failure from here on must start a new discovery, not join this one.
    this.discovery = null;
    this.setState("ready", connection.machine.id, `connected to server ${connection.machine.id} (epoch ${status.epoch})`);
    this.flushPending();
    return true;
  }

  private async authenticate(connection: FrameConnection): Promise<void> {
    assert(this.token, "authenticate needs a token");
    const reply = await connection.call({ v: protocolVersion, id: this.allocateId(), type: "auth", token: this.token }, this.settings.requestTimeoutMs);
    if (reply.type === "ok") {
      this.username = String(reply.data.username);
      return;
    }
    if (reply.code === errorCodes.BAD_SESSION) {
      this.logger.warn({ server: connection.machine.id }, "session token no longer accepted");
      return this.endSession("the server no longer accepts this session (logged out elsewhere or account deleted)");
    }
    throw new ServerError(reply.code as ErrorCode, reply.message, reply.primary, reply.retryAfterMs);
  }

  /** Fetches every event after the last one seen, merges the live ones that arrive meanwhile, delivers. */
  private async resumeEvents(connection: FrameConnection): Promise<void> {
    this.sequencer.beginResume();
    let after = this.sequencer.resumeFrom;
    let upTo = after;
    let fetched = 0;
    let delivered = 0;
    for (let page = 0; ; page += 1) {
      // Each page is delivered as it comes, so a resume cut short here goes on from it next time.
      if (page >= connectorResumePagesMax) throw new Error(`more than ${connectorResumePagesMax} pages of missed events in one resume`);
      const reply = await connection.call({ v: protocolVersion, id: this.allocateId(), type: "events_since", afterSeq: after, limit: pageSizeMax }, this.settings.requestTimeoutMs);
      if (reply.type !== "ok") throw new ServerError(reply.code as ErrorCode, reply.message, reply.primary, reply.retryAfterMs);
      const answer = EventsSincePage.safeParse(reply.data);
      const known = answer.success ? KnownEvents.safeParse(answer.data.events.filter((item) => !this.skipsUnknownEvent(item.event))) : undefined;
      if (!answer.success || !known?.success) {
        throw new ChatError(errorCodes.BAD_RESPONSE, `events_since answer does not match the protocol: ${(answer.error ?? known?.error)?.issues[0]?.message}`);
      }
      if (connection.closed || this.link !== connection) throw new Error("link lost during the resume");
      fetched += answer.data.events.length;
      for (const event of this.sequencer.onResumedPage(known.data)) {
        delivered += 1;
        this.deliver(event);
      }
      upTo = Math.max(upTo, answer.data.upTo);
      // The next page goes on from this one's last seq, whatever its kind.
      if (!answer.data.more || answer.data.events.length === 0) break;
      after = answer.data.events[answer.data.events.length - 1].seq;
    }
    const live = this.sequencer.endResume([], upTo);
    this.logger.info({ server: connection.machine.id, fetched, delivered: delivered + live.length, upTo }, "resumed push events");
    for (const event of live) this.deliver(event);
  }

  /** Kinds of pushed events skipped so far, each logged once. */
  private readonly unknownEventKinds = new Set<string>();

  private noteUnknownEvent(kind: string): void {
    if (this.unknownEventKinds.has(kind)) return;
    this.unknownEventKinds.add(kind);
    this.logger.warn({ kind }, "skipping push events of a kind this client does not know (a newer server?)");
  }

  /** True for an event of a kind this connector does not know, which it then skips. */
  private skipsUnknownEvent(event: unknown): boolean {
    const kind = unknownEventKind(event);
    if (kind !== undefined) this.noteUnknownEvent(kind);
    return kind !== undefined;
  }

  private onPush(link: FrameConnection, frame: EventFrame): void {
    if (link !== this.link) return;
    for (const event of this.sequencer.onLive({ seq: frame.seq, event: frame.event })) this.deliver(event);
  }

  /** Names a DM conversation after the other party, whichever way the server named it. */
  private deliver(event: ChatEvent): void {
    if (event.event.kind === "message" && event.event.message.to !== undefined && this.username) {
      const message = event.event.message;
      const other = message.from.toLowerCase() === this.username.toLowerCase() ? message.to! : message.from;
      if (message.conversation !== `@${other}`) event = { seq: event.seq, event: { kind: "message", message: { ...message, conversation: `@${other}` } } };
    }
    this.emit("event", event);
  }

  private onLinkClosed(link: FrameConnection, reason: string): void {
    if (link !== this.link || this.closed) return;
    if (this.currentState === "ready") void this.rediscover(`link to server ${link.machine.id} lost: ${reason}`);
    // While establishing, the discovery loop sees the failure through the rejected call.
  }

  /** Forgets the link; what was on the wire must be re-sent, and a write there may have been applied. */
  private dropLink(link: FrameConnection, reason: string): void {
    if (this.link === link) this.link = null;
    for (const request of this.pending.values()) {
      if (request.sentOn !== link) continue;
      if (request.attemptTimer) clearTimeout(request.attemptTimer);
      request.attemptTimer = null;
      request.sentOn = null;
      if (request.write) request.unanswered = true;
    }
    link.close(reason);
  }

  private setState(state: ConnectorState, serverId: number | null, reason: string): void {
    if (state === this.currentState && serverId === this.currentServerId) return;
    const previousServerId = this.lastServerId;
    this.currentState = state;
    this.currentServerId = serverId;
    if (serverId !== null) this.lastServerId = serverId;
    this.logger.info({ state, serverId, reason }, "state");
    this.emit("state", { state, serverId, previousServerId, reason });
  }
}

export type LoginResult = {
  username: string;
  token: string;
  seq: number;
  unread: UnreadSummary;
  channels?: string[];
};
