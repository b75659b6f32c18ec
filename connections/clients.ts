// The client side of a server: TCP connections speaking connections/schema.ts, sessions, and pushes.
// Writes go through the ConnectionManager (replicated, answered on commit); reads wait for its read
// barrier. Identity always comes from the connection's session, never from request fields.
import net from "node:net";
import type { Logger } from "pino";
import { parseConversation, wildcardToGlob } from "../schema.js";
import { monotonicMs } from "../utils.js";
import type { Command, Effect } from "../store/commands.js";
import { Queries } from "../store/queries.js";
import { burnPasswordCheck, hashPassword, newSessionId, sessionIdFromToken, tokenFor, verifyPassword } from "./auth.js";
import {
  connectionFramesPerTurnMax,
  connectionInflightMax,
  connectionOutputMaxBytes,
  connectionOutputPauseBytes,
  frameBytesMax,
  passwordThrottle,
  protocolVersion,
} from "./consts.js";
import { ChatError, errorCodes, TooManyAttemptsError, type ErrorCode } from "./errors.js";
import { encodeFrame, LineReader } from "./framing.js";
import type { ConnectionManager, WriteOutcome } from "./manager.js";
import { PasswordThrottle } from "./password-throttle.js";
import { anonymousRequestTypes, anyServerRequestTypes, Request, requestTypes, type EventBody } from "./schema.js";

type Session = { userId: number; username: string; sessionId: string };

/**
 * Connections written to in this turn of the event loop, uncorked together in its check phase.
 * Not on process.nextTick: a commit pushes its events synchronously, but its responses are sent only
 * after several awaits (microtasks), and nextTick runs between the two, which cost every client two
 * writes per commit instead of one.
 */
const corkedConnections = new Set<ClientConnection>();

function uncorkAll(): void {
  const connections = [...corkedConnections];
  corkedConnections.clear();
  for (const connection of connections) connection.socket.uncork();
}

class ClientConnection {
  clientId: string | null = null;
  session: Session | null = null;
  inflight = 0;
  closed = false;
  /** Frames handled since the last socket read; past connectionFramesPerTurnMax they wait in `backlog`. */
  framesThisRead = 0;
  readonly backlog: string[] = [];
  /** Reading is paused, and reads wait, until the client has read what was sent to it. */
  outputPaused = false;
  private drainWaiters: (() => void)[] = [];
  /** register, login and auth change the session: one at a time, in the order they arrived. */
  sessionChange: Promise<unknown> = Promise.resolve();
  constructor(
    readonly socket: net.Socket,
    private readonly events: {
      /** Unsent output passed connectionOutputMaxBytes: the service closes this connection. */
      onOutputOverflow: (connection: ClientConnection) => void;
      /** The output that paused this connection has been sent. */
      onDrained: (connection: ClientConnection) => void;
    },
  ) {}
  send(frame: unknown): void {
    this.sendLine(encodeFrame(frame));
  }
  /** Writes a frame already encoded with encodeFrame (a push shared by many connections). */
  sendLine(line: string): void {
    if (this.closed) return;
    // Frames written in one event-loop turn (a commit's pushes and responses) leave in one write.
    if (!corkedConnections.has(this)) {
      if (corkedConnections.size === 0) setImmediate(uncorkAll);
      corkedConnections.add(this);
      this.socket.cork();
    }
    this.socket.write(line);
    const unsent = this.socket.writableLength;
    if (unsent > connectionOutputMaxBytes) this.events.onOutputOverflow(this);
    else if (unsent > connectionOutputPauseBytes && !this.outputPaused) {
      this.outputPaused = true;
      this.socket.pause();
      this.socket.once("drain", () => {
        this.outputPaused = false;
        this.releaseDrainWaiters();
        this.events.onDrained(this);
      });
    }
  }
  /** Resolves once this connection's output is below connectionOutputPauseBytes (or it closed). */
  drained(): Promise<void> {
    if (!this.outputPaused || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }
  releaseDrainWaiters(): void {
    for (const resolve of this.drainWaiters.splice(0)) resolve();
  }
  /** Reads again once no frame waits and the client has read its output. */
  resumeIfIdle(): void {
    if (!this.closed && !this.outputPaused && this.backlog.length === 0) this.socket.resume();
  }
}

export class ClientService {
  private server: net.Server | undefined;
  private readonly connections = new Set<ClientConnection>();
  private readonly online = new Map<number, Set<ClientConnection>>();
  /** The lower-cased names of the same users (names are unique ignoring case): a DM learns whether its recipient is online without a query. */
  private readonly onlineNames = new Set<string>();
  private readonly queries: Queries;
  private readonly membersStatement;
  /** Pushes read channel memberships in one read transaction per commit, not one implicit one per post. */
  private readonly pushInReadTransaction;
  private lastTs = 0;
  /**
   * Reads that passed the read barrier, each waiting for a turn of the event loop of its own. A
   * history page can take ~40 ms; many answered in one turn would hold the loop past freezeDetectMs.
   */
  private readonly readsWaiting: (() => void)[] = [];
  private readTurnScheduled = false;
  /** Wrong passwords per account on this server; a failover starts them again (architecture.md §8). */
  private readonly passwordThrottle = new PasswordThrottle(passwordThrottle);

  constructor(
    private readonly manager: ConnectionManager,
    private readonly secret: string,
    private readonly logger: Logger,
  ) {
    this.queries = new Queries(manager.store.db);
    this.membersStatement = manager.store.db.prepare("SELECT user_id, joined_seq FROM memberships WHERE channel_id = ?");
    this.pushInReadTransaction = manager.store.db.transaction((committed: { index: number; effects: Effect[] }[]) => this.pushNow(committed));
  }

  async listen(host: string, port: number): Promise<number> {
    this.server = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(port, host, () => resolve());
    });
    return (this.server.address() as net.AddressInfo).port;
  }

  close(): void {
    this.server?.close();
    this.dropAll();
  }

  /** The server stopped being primary: close every connection so clients fail over and retry. */
  dropAll(): void {
    for (const connection of this.connections) {
      connection.closed = true;
      connection.socket.destroy();
    }
    this.connections.clear();
    this.online.clear();
    this.onlineNames.clear();
  }

  /** Pushes the events of committed entries to the online sessions they concern. */
  push(committed: { index: number; effects: Effect[] }[]): void {
    if (this.online.size === 0) return;
    this.pushInReadTransaction(committed);
  }

  private pushNow(committed: { index: number; effects: Effect[] }[]): void {
    // A batch often posts to the same channel several times: its members are read once.
    const membersOf = new Map<number, { userId: number; joinedSeq: number }[]>();
    for (const { index, effects } of committed) {
      for (const effect of effects) {
        let users: number[];
        if ("users" in effect.audience) users = effect.audience.users;
        else {
          const channelId = effect.audience.channelId;
          const members = membersOf.get(channelId) ?? this.channelMembers(channelId);
          membersOf.set(channelId, members);
          // Members as of the entry: one who joined after it (between its apply and its commit) does
          // not get it, just as events_since and history would not show it to them.
          users = members.filter((member) => member.joinedSeq < index).map((member) => member.userId);
        }
        // Encoded at most once, however many sessions receive it.
        let line: string | undefined;
        for (const userId of users) {
          for (const connection of this.online.get(userId) ?? []) {
            line ??= encodeFrame({ v: protocolVersion, type: "event", seq: index, event: effect.event });
            connection.sendLine(line);
          }
        }
      }
    }
  }

  private channelMembers(channelId: number): { userId: number; joinedSeq: number }[] {
    const rows = this.membersStatement.all(channelId) as { user_id: number; joined_seq: number }[];
    return rows.map((row) => ({ userId: row.user_id, joinedSeq: row.joined_seq }));
  }

  // ---- connections -------------------------------------------------------------

  private accept(socket: net.Socket): void {
    socket.setNoDelay(true);
    const connection = new ClientConnection(socket, {
      onOutputOverflow: (overflowing) => {
        this.logger.warn({ clientId: overflowing.clientId, unsentBytes: overflowing.socket.writableLength }, "client does not read its output; closing its connection");
        this.closeConnection(overflowing);
        overflowing.socket.destroy();
      },
      onDrained: (drained) => this.handleBacklog(drained),
    });
    this.connections.add(connection);
    const reader = new LineReader(frameBytesMax, {
      onFrame: (line) => this.receive(connection, line),
      onOversize: () => {
        this.sendError(connection, 0, errorCodes.FRAME_TOO_LARGE, `frame larger than ${frameBytesMax} bytes; closing`);
        this.closeConnection(connection);
        // Sends the error first, then closes, whether or not the client ever closes its side.
        connection.socket.destroySoon();
      },
    });
    socket.on("data", (data) => {
      connection.framesThisRead = 0;
      reader.push(data);
    });
    socket.on("error", () => {});
    socket.on("close", () => this.closeConnection(connection));
  }

  /** No more frames in or out, and its session is offline at once (DMs to it are queued again). */
  private closeConnection(connection: ClientConnection): void {
    connection.closed = true;
    connection.backlog.length = 0;
    connection.releaseDrainWaiters();
    this.connections.delete(connection);
    this.detachSession(connection);
  }

  /** A frame is handled now, or after the ones waiting, a bounded number per turn of the event loop. */
  private receive(connection: ClientConnection, line: string): void {
    if (connection.closed) return;
    if (connection.backlog.length === 0 && connection.framesThisRead < connectionFramesPerTurnMax) {
      connection.framesThisRead += 1;
      this.dispatch(connection, line);
      return;
    }
    connection.backlog.push(line);
    if (connection.backlog.length === 1) {
      connection.socket.pause();
      setImmediate(() => this.handleBacklog(connection));
    }
  }

  /** The next frames that wait, while the client reads its output; reading resumes once none wait. */
  private handleBacklog(connection: ClientConnection): void {
    if (connection.closed || connection.outputPaused) return;
    for (const line of connection.backlog.splice(0, connectionFramesPerTurnMax)) this.dispatch(connection, line);
    if (connection.backlog.length > 0) setImmediate(() => this.handleBacklog(connection));
    else connection.resumeIfIdle();
  }

  private dispatch(connection: ClientConnection, line: string): void {
    this.onFrame(connection, line).catch((error: unknown) => {
      // Every error a request can cause is answered inside onFrame; reaching here is a bug in this
      // server. The connection cannot be trusted to be in step any more, so it goes, not the process.
      this.logger.error({ err: error }, "client frame handling failed; closing the connection");
      this.closeConnection(connection);
      connection.socket.destroy();
    });
  }

  private sendError(connection: ClientConnection, id: number, code: ErrorCode, message: string, extra: { withHint?: boolean; retryAfterMs?: number } = {}): void {
    const frame: Record<string, unknown> = { v: protocolVersion, type: "error", id, code, message };
    if (extra.withHint) {
      const primary = this.manager.primaryHint();
      if (primary) frame.primary = primary;
    }
    if (extra.retryAfterMs !== undefined) frame.retryAfterMs = Math.ceil(extra.retryAfterMs);
    connection.send(frame);
  }

  private async onFrame(connection: ClientConnection, line: string): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      return this.sendError(connection, 0, errorCodes.BAD_JSON, "frame is not valid JSON");
    }
    const id = typeof raw === "object" && raw !== null && Number.isSafeInteger((raw as { id?: unknown }).id) && (raw as { id: number }).id > 0 ? (raw as { id: number }).id : 0;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return this.sendError(connection, id, errorCodes.BAD_REQUEST, "frame must be a JSON object");
    const fields = raw as Record<string, unknown>;
    if (fields.v === undefined) return this.sendError(connection, id, errorCodes.BAD_REQUEST, `missing "v" (protocol version ${protocolVersion})`);
    if (fields.v !== protocolVersion) return this.sendError(connection, id, errorCodes.UNSUPPORTED_VERSION, `"v" must be ${protocolVersion}`);
    if (typeof fields.type !== "string" || !requestTypes.includes(fields.type as Request["type"])) {
      // Named only when it is a short string: a client's value could be anything, even nested too deep to stringify.
      const named = typeof fields.type === "string" && fields.type.length <= 64 ? JSON.stringify(fields.type) : `(a ${Array.isArray(fields.type) ? "array" : typeof fields.type})`;
      return this.sendError(connection, id, errorCodes.UNKNOWN_TYPE, `unknown request type ${named}`);
    }
    const parsed = Request.safeParse(raw);
    if (!parsed.success) {
      const problems = parsed.error.issues.slice(0, 5).map((issue) => `${issue.path.join(".") || "(request)"}: ${issue.message}`);
      return this.sendError(connection, id, errorCodes.BAD_REQUEST, problems.join("; "));
    }
    if (connection.inflight >= connectionInflightMax) {
      return this.sendError(connection, id, errorCodes.OVERLOADED, `more than ${connectionInflightMax} requests in flight`);
    }
    connection.inflight += 1;
    try {
      const data = await this.handle(connection, parsed.data);
      connection.send({ v: protocolVersion, type: "ok", id: parsed.data.id, data });
    } catch (error) {
      if (error instanceof ChatError) {
        this.sendError(connection, parsed.data.id, error.code, error.message, {
          withHint: error.code === errorCodes.NOT_PRIMARY,
          retryAfterMs: error instanceof TooManyAttemptsError ? error.retryAfterMs : undefined,
        });
      }
      else {
        this.logger.error({ err: error, type: parsed.data.type }, "request failed");
        this.sendError(connection, parsed.data.id, errorCodes.INTERNAL, "internal error");
      }
    } finally {
      connection.inflight -= 1;
    }
  }

  // ---- dispatch ----------------------------------------------------------------

  private async handle(connection: ClientConnection, request: Request): Promise<Record<string, unknown>> {
    if (!anyServerRequestTypes.has(request.type) && !this.manager.canAcceptWrites()) {
      throw new ChatError(errorCodes.NOT_PRIMARY, `server ${this.manager.self.id} is not the primary`);
    }
    if (!anonymousRequestTypes.has(request.type) && !connection.session) {
      throw new ChatError(errorCodes.NOT_LOGGED_IN, "log in first");
    }
    const session = connection.session!;
    switch (request.type) {
      case "hello":
        connection.clientId = request.clientId;
        return { ...this.manager.status(), protocol: protocolVersion };
      case "ping":
        return { ...this.manager.status() };
      case "register":
        return this.oneSessionChangeAtATime(connection, () => this.register(connection, request));
      case "login":
        return this.oneSessionChangeAtATime(connection, () => this.login(connection, request));
      case "auth":
        return this.oneSessionChangeAtATime(connection, () => this.auth(connection, request.token));
      case "logout": {
        const outcome = await this.writeOutcome(connection, request.id, { op: "logout", actor: session.userId, sessionId: session.sessionId });
        // The session that entry ended is gone: every connection that resumed it with its token is
        // logged out too. A retry answered from the log names the session its first attempt ended,
        // which may not be this connection's current one.
        const entry = this.manager.store.entry(outcome.index);
        const ended = entry?.command.op === "logout" ? entry.command.sessionId : session.sessionId;
        for (const other of [...(this.online.get(session.userId) ?? [])]) {
          if (other.session?.sessionId === ended) this.detachSession(other);
        }
        return outcome.data;
      }
      case "delete_account":
        return this.deleteAccount(connection, session, request.password, request.id);
      case "send_dm": {
        const delivered = this.onlineNames.has(request.to.toLowerCase());
        return this.write(connection, request.id, { op: "send_dm", actor: session.userId, to: request.to, body: request.body, ts: this.now(), delivered });
      }
      case "read_undelivered":
        return this.write(connection, request.id, { op: "read_undelivered", actor: session.userId, limit: request.limit });
      case "delete_message":
        return this.write(connection, request.id, { op: "delete_message", actor: session.userId, messageId: request.messageId });
      case "create_channel":
        return this.write(connection, request.id, { op: "create_channel", actor: session.userId, channel: request.channel, topic: request.topic, ts: this.now() });
      case "join_channel":
        return this.write(connection, request.id, { op: "join_channel", actor: session.userId, channel: request.channel });
      case "leave_channel":
        return this.write(connection, request.id, { op: "leave_channel", actor: session.userId, channel: request.channel });
      case "set_topic":
        return this.write(connection, request.id, { op: "set_topic", actor: session.userId, channel: request.channel, topic: request.topic });
      case "delete_channel":
        return this.write(connection, request.id, { op: "delete_channel", actor: session.userId, channel: request.channel });
      case "post":
        return this.write(connection, request.id, { op: "post", actor: session.userId, channel: request.channel, body: request.body, ts: this.now() });
      case "mark_read":
        return this.write(connection, request.id, { op: "mark_read", actor: session.userId, conversation: request.conversation, messageId: request.messageId });
      case "list_users": {
        await this.readable(connection);
        const page = this.queries.listUsers(request.pattern, request.after, request.limit);
        const users = page.names.map((name) => {
          const user = this.queries.userByName(name);
          return { username: name, online: user !== undefined && (this.online.get(user.id)?.size ?? 0) > 0 };
        });
        return { users, next: page.next };
      }
      case "list_channels": {
        await this.readable(connection);
        const page = this.queries.listChannels(session.userId, wildcardToGlob(request.pattern), request.after, request.limit);
        return { channels: page.channels, next: page.next };
      }
      case "history": {
        const ref = parseConversation(request.conversation);
        if (!ref) throw new ChatError(errorCodes.BAD_REQUEST, `conversation must be "@username" or "#channel"`);
        await this.readable(connection);
        const result = this.queries.history(session.userId, ref, { before: request.before, after: request.after }, request.limit, this.manager.core.committed);
        if ("error" in result) throw new ChatError(errorCodes[result.error], describeHistoryError(result.error, request.conversation));
        return result;
      }
      case "unread":
        await this.readable(connection);
        return this.queries.unread(session.userId);
      case "events_since": {
        await this.readable(connection);
        const upTo = this.manager.core.committed;
        const result = this.queries.eventsSince(session.userId, request.afterSeq, upTo, request.limit);
        return { events: result.events, more: result.more, upTo };
      }
    }
  }

  /**
   * The read barrier, then a turn of the event loop for this read alone, taken only while the
   * connection's client reads its output: its answer is computed when it can be sent.
   */
  private async readable(connection: ClientConnection): Promise<void> {
    for (;;) {
      await this.manager.readBarrier();
      await new Promise<void>((resolve) => {
        this.readsWaiting.push(resolve);
        this.scheduleReadTurn();
      });
      if (connection.outputPaused) {
        await connection.drained();
        continue;
      }
      // The read lease may have run out while earlier reads had their turns.
      if (this.manager.canServeReadsNow()) return;
    }
  }

  private scheduleReadTurn(): void {
    if (this.readTurnScheduled || this.readsWaiting.length === 0) return;
    this.readTurnScheduled = true;
    setImmediate(() => {
      this.readTurnScheduled = false;
      // Its read runs in the microtasks right after this callback; the next read gets the next turn.
      this.readsWaiting.shift()!();
      this.scheduleReadTurn();
    });
  }

  /**
   * Runs after the connection's earlier register, login and auth requests have finished: two
   * pipelined registers would otherwise both pass the "not logged in yet" check and make two accounts.
   */
  private oneSessionChangeAtATime<T>(connection: ClientConnection, work: () => Promise<T>): Promise<T> {
    const run = connection.sessionChange.then(work);
    connection.sessionChange = run.catch(() => {});
    return run;
  }

  /** Proposes a write and answers with its response, or throws its error. */
  private async write(connection: ClientConnection, requestId: number, command: Command): Promise<Record<string, unknown>> {
    return (await this.writeOutcome(connection, requestId, command)).data;
  }

  /** As write, with the log index of the entry that answered (the first attempt's, for a retry). */
  private async writeOutcome(connection: ClientConnection, requestId: number, command: Command): Promise<WriteOutcome & { ok: true }> {
    const outcome: WriteOutcome = await this.manager.submitWrite(connection.clientId, connection.clientId ? requestId : null, command);
    if (!outcome.ok) throw new ChatError(outcome.code as ErrorCode, outcome.message);
    return outcome;
  }

  private now(): number {
    // Timestamps never go backwards, even if the wall clock does.
    this.lastTs = Math.max(this.lastTs, Date.now());
    return this.lastTs;
  }

  // ---- accounts ----------------------------------------------------------------

  private async register(connection: ClientConnection, request: Extract<Request, { type: "register" }>): Promise<Record<string, unknown>> {
    // A retry of a register already applied gets its original answer (even on the connection it
    // logged in), but only for someone who knows that account's password.
    const previous = connection.clientId ? this.manager.store.dedupLookup(connection.clientId, request.id) : undefined;
    if (previous) {
      const user = previous.command.op === "register" ? this.queries.userByName(String(previous.data.username)) : undefined;
      const right = user && user.name.toLowerCase() === request.username.toLowerCase() && (await this.checkPassword(user.name, () => verifyPassword(request.password, user.salt, user.hash)));
      if (!right) throw new ChatError(errorCodes.BAD_CREDENTIALS, "wrong username or password for this retried request");
      return this.startSession(connection, await this.write(connection, request.id, { op: "register", username: user.name, salt: "", hash: "", sessionId: "", ts: 0 }));
    }
    if (connection.session) throw new ChatError(errorCodes.ALREADY_LOGGED_IN, "log out before registering another account");
    if (this.queries.userByName(request.username)) throw new ChatError(errorCodes.NAME_TAKEN, `username ${request.username} is taken`);
    const { salt, hash } = await hashPassword(request.password);
    const sessionId = newSessionId();
    const data = await this.write(connection, request.id, { op: "register", username: request.username, salt, hash, sessionId, ts: this.now() });
    return this.startSession(connection, data);
  }

  private async login(connection: ClientConnection, request: Extract<Request, { type: "login" }>): Promise<Record<string, unknown>> {
    // The password is checked on every attempt, retries included; a retry then gets the session
    // its first attempt created (the dedup lookup also checks it is the same user).
    const previous = connection.clientId ? this.manager.store.dedupLookup(connection.clientId, request.id) : undefined;
    if (connection.session && !previous) throw new ChatError(errorCodes.ALREADY_LOGGED_IN, "already logged in on this connection");
    const user = this.queries.userByName(request.username);
    // An unknown name is throttled like a known one: the answers must not tell them apart.
    const right = await this.checkPassword(request.username, async () => {
      if (user) return verifyPassword(request.password, user.salt, user.hash);
      await burnPasswordCheck(request.password);
      return false;
    });
    if (!user || !right) throw new ChatError(errorCodes.BAD_CREDENTIALS, "wrong username or password");
    const data = await this.write(connection, request.id, { op: "login", userId: user.id, sessionId: newSessionId(), ts: this.now() });
    return this.startSession(connection, data);
  }

  private async auth(connection: ClientConnection, token: string): Promise<Record<string, unknown>> {
    const sessionId = sessionIdFromToken(token, this.secret);
    await this.manager.readBarrier();
    const found = sessionId ? this.queries.session(sessionId) : undefined;
    if (!sessionId || !found) throw new ChatError(errorCodes.BAD_SESSION, "session token is not valid (expired, logged out or forged)");
    return this.startSession(connection, { username: found.username, sessionId });
  }

  /**
   * Runs one password check of account `username` under the throttle. While the account's delay
   * runs it is refused at once, with no scrypt, so guessing costs the guesser the wait.
   */
  private async checkPassword(username: string, check: () => Promise<boolean>): Promise<boolean> {
    const key = username.toLowerCase();
    const verdict = this.passwordThrottle.begin(key, monotonicMs());
    if (!verdict.allowed) throw new TooManyAttemptsError(verdict.retryAfterMs);
    let outcome: "right" | "wrong" | "none" = "none";
    try {
      const right = await check();
      outcome = right ? "right" : "wrong";
      return right;
    } finally {
      this.passwordThrottle.finish(key, outcome, monotonicMs());
    }
  }

  private async startSession(connection: ClientConnection, data: Record<string, unknown>): Promise<Record<string, unknown>> {
    const sessionId = data.sessionId as string;
    const found = this.queries.session(sessionId);
    if (!found) throw new ChatError(errorCodes.BAD_SESSION, "session ended before it could start");
    this.detachSession(connection);
    // The client went away while its password was checked or its login committed: it is not online.
    if (connection.closed) throw new ChatError(errorCodes.UNAVAILABLE, "connection closed before the session started");
    connection.session = { userId: found.userId, username: found.username, sessionId };
    let sessions = this.online.get(found.userId);
    if (!sessions) this.online.set(found.userId, (sessions = new Set()));
    sessions.add(connection);
    this.onlineNames.add(found.username.toLowerCase());
    const { sessionId: _hidden, ...rest } = data;
    void _hidden;
    // Pushes start with the entry after `seq`; events_since(seq) fills any gap a reconnect left.
    return { ...rest, username: found.username, token: tokenFor(sessionId, this.secret), unread: this.queries.unread(found.userId), seq: this.manager.core.committed };
  }

  private async deleteAccount(connection: ClientConnection, session: Session, password: string, requestId: number): Promise<Record<string, unknown>> {
    const previous = connection.clientId ? this.manager.store.dedupLookup(connection.clientId, requestId) : undefined;
    if (!previous) {
      const user = this.queries.userByName(session.username);
      const right = user && (await this.checkPassword(user.name, () => verifyPassword(password, user.salt, user.hash)));
      if (!right) throw new ChatError(errorCodes.BAD_CREDENTIALS, "wrong password");
    }
    const data = await this.write(connection, requestId, { op: "delete_account", actor: session.userId, ts: this.now() });
    // Every session of the account ends, on every connection.
    for (const other of [...(this.online.get(session.userId) ?? [])]) this.detachSession(other);
    return data;
  }

  private detachSession(connection: ClientConnection): void {
    const session = connection.session;
    if (!session) return;
    connection.session = null;
    const sessions = this.online.get(session.userId);
    sessions?.delete(connection);
    if (sessions && sessions.size === 0) {
      this.online.delete(session.userId);
      this.onlineNames.delete(session.username.toLowerCase());
    }
  }
}

function describeHistoryError(error: "UNKNOWN_CHANNEL" | "NOT_MEMBER" | "UNKNOWN_USER", conversation: string): string {
  if (error === "UNKNOWN_CHANNEL") return `no channel ${conversation}`;
  if (error === "NOT_MEMBER") return `join ${conversation} to read its history`;
  return `no user named ${conversation.slice(1)}`;
}
