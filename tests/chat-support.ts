// Shared set-up for the chat-core tests: one real single-server cluster per test file, raw protocol
// clients that are closed with it, unique usernames, and a read-only view of the server's SQLite file
// (log length and a digest of the replicated state) to prove that a request changed nothing.
import { join } from "node:path";
import type Database from "better-sqlite3";
import { expect, test } from "vitest";
import { stateDigestOf } from "../store/store.js";
import { openReadOnly, TestCluster } from "./helpers/cluster.js";
import { TestClient, type Frame } from "./helpers/client.js";

export const defaultPassword = "password123";

let nameCounter = 0;
/** A username no other test uses: prefix, a per-process counter and a random tail (at most 32 characters). */
export function uniqueName(prefix: string): string {
  nameCounter += 1;
  return `${prefix.slice(0, 14)}${nameCounter}x${Math.random().toString(36).slice(2, 8)}`;
}

/** A lower-case channel name no other test uses. */
export function uniqueChannel(prefix: string): string {
  return uniqueName(prefix).toLowerCase();
}

let clientCounter = 0;
export function newClientId(): string {
  clientCounter += 1;
  return `chat-test-${process.pid}-${clientCounter}-${Math.random().toString(36).slice(2, 8)}`;
}

export type Snapshot = { lastIndex: number; digest: string };

/** One server process (a cluster of one) and the clients a test file opened on it. */
export class ChatServer {
  private readonly clients: TestClient[] = [];

  private constructor(readonly cluster: TestCluster) {}

  static async start(): Promise<ChatServer> {
    const cluster = await TestCluster.create({ servers: 1 });
    try {
      await cluster.startAll();
      await cluster.waitForPrimary();
    } catch (error) {
      await cluster.destroy();
      throw error;
    }
    return new ChatServer(cluster);
  }

  get host(): string {
    return this.cluster.machine(1).host;
  }
  get port(): number {
    return this.cluster.machine(1).clientPort;
  }
  get dbPath(): string {
    return join(this.cluster.dataDir(1), "chat.db");
  }
  get pid(): number | undefined {
    return this.cluster.pid(1);
  }

  /** A raw connection with no hello and no session. */
  async connect(): Promise<TestClient> {
    const client = await TestClient.connect(this.host, this.port);
    failFastOnClose(client);
    this.clients.push(client);
    return client;
  }

  /** A connection that has said hello with a fresh (or the given) client id. */
  async hello(clientId = newClientId()): Promise<TestClient> {
    const client = await this.connect();
    await client.ok("hello", { clientId });
    return client;
  }

  /** Registers `username` on a new connection (with a client id) and returns it, logged in. */
  async register(username: string, password = defaultPassword): Promise<{ client: TestClient; token: string; data: Record<string, any> }> {
    const client = await this.hello();
    const data = await client.ok("register", { username, password });
    return { client, token: data.token as string, data };
  }

  /** Logs in on a new connection (with a client id). */
  async login(username: string, password = defaultPassword): Promise<{ client: TestClient; data: Record<string, any> }> {
    const client = await this.hello();
    const data = await client.ok("login", { username, password });
    return { client, data };
  }

  /** Resumes a session on a new connection with its token. */
  async auth(token: string): Promise<{ client: TestClient; data: Record<string, any> }> {
    const client = await this.hello();
    const data = await client.ok("auth", { token });
    return { client, data };
  }

  /** The server's epoch once it serves as primary; it moves on every step-down and re-election. */
  async epoch(timeoutMs = 15000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const status = await this.cluster.status(1);
      if (status?.role === "primary") return status.epoch;
      await new Promise((done) => setTimeout(done, 20));
    }
    throw new Error(`server 1 is not serving as primary after ${timeoutMs} ms`);
  }

  /** How often the server has logged that it stopped serving clients (a step-down). */
  stepDowns(): number {
    return this.cluster.readLog(1).split("not serving clients any more").length - 1;
  }

  /** The server's commit index, as `ping` reports it. */
  async commitIndex(): Promise<number> {
    const client = await this.connect();
    try {
      return (await client.ok("ping")).commitIndex as number;
    } finally {
      client.close();
    }
  }

  /** The last log index and a digest of every replicated table, read from the SQLite file (read-only). */
  snapshot(): Snapshot {
    const db = openReadOnly(this.dbPath);
    try {
      return db.transaction(() => ({ lastIndex: lastLogIndex(db), digest: stateDigestOf(db) }))();
    } finally {
      db.close();
    }
  }

  /** Runs `read` against a read-only handle on the server's SQLite file. */
  readDb<T>(read: (db: Database.Database) => T): T {
    const db = openReadOnly(this.dbPath);
    try {
      return read(db);
    } finally {
      db.close();
    }
  }

  async stop(): Promise<void> {
    for (const client of this.clients) client.close();
    await this.cluster.destroy();
  }
}

/**
 * TestClient keeps a request pending until its timeout when the server closes the connection. Answer
 * every pending request with CHAT_ERR_CLOSED instead, so a dropped connection fails a test at once.
 * (Reaches into TestClient's private waiter map; if that changes, failures are merely slower.)
 */
function failFastOnClose(client: TestClient): void {
  client.socket.once("close", () => {
    const waiters = (client as unknown as { waiters?: Map<number, (frame: Frame) => void> }).waiters;
    if (!(waiters instanceof Map)) return;
    for (const [id, resolve] of [...waiters]) {
      waiters.delete(id);
      resolve({ v: 1, type: "error", id, code: "CHAT_ERR_CLOSED", message: "connection closed by the server" });
    }
  });
}

/**
 * `test`, for scenarios against one ChatServer, retried when the server stepped down during a failed
 * attempt. Known product issue (see the report): under CPU load this VM stalls processes for 150-800 ms;
 * the core then takes its own server for frozen (freezeDetectMs = 150), steps down even when it is the
 * only member, re-elects itself in a new epoch and drops every client connection. Tests here check chat
 * semantics with a raw client that has no reconnect logic, so such an attempt says nothing either way:
 * it runs again, on fresh connections and names, at most `attemptsMax` times. A failure without an
 * epoch change is never retried.
 */
export function serverTest(getServer: () => ChatServer, attemptsMax = 3) {
  return (name: string, body: () => Promise<void>, timeoutMs?: number) =>
    test(
      name,
      async () => {
        for (let attempt = 1; ; attempt += 1) {
          const server = getServer();
          const epoch = await server.epoch();
          const stepDowns = server.stepDowns();
          try {
            await body();
            return;
          } catch (error) {
            if (attempt >= attemptsMax) throw error;
            const now = await server.epoch(5000).catch(() => undefined);
            // The log is written asynchronously: give a step-down line a moment to appear.
            const logged = await waitUntil("a step-down in the log", () => server.stepDowns() > stepDowns, 500).then(() => true, () => false);
            if (now === undefined || (now === epoch && !logged)) throw error;
            console.warn(`"${name}": the server stepped down (epoch ${epoch} -> ${now}) during attempt ${attempt}; running it again. It failed with: ${(error as Error).message.split("\n")[0]}`);
          }
        }
      },
      timeoutMs,
    );
}

export function lastLogIndex(db: Database.Database): number {
  return ((db.prepare("SELECT max(idx) AS idx FROM log").get() as { idx: number | null }).idx ?? 0) as number;
}

/** The digest Store.stateDigest uses, over any handle (re-exported for the chat tests). */
export { stateDigestOf };

/** Sends a request that must fail and returns its error code (fails the test on an ok answer). */
export async function errorOf(client: TestClient, type: string, fields: Record<string, unknown> = {}): Promise<string> {
  const frame = await client.request(type, fields);
  expect(frame.type, `${type} ${JSON.stringify(fields)} should fail, got ${JSON.stringify(frame)}`).toBe("error");
  return frame.code as string;
}

/** Waits until `condition` holds, polling; throws with `what` after timeoutMs. */
export async function waitUntil(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await new Promise((done) => setTimeout(done, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Waits for the next push event matching `match` (a subset of its `event` body) and returns it. */
export function waitForPush(client: TestClient, match: Record<string, unknown>, timeoutMs = 5000): Promise<Frame> {
  return client.waitForEvent((frame) => isSubset(match, frame.event), timeoutMs);
}

function isSubset(expected: unknown, actual: unknown): boolean {
  if (expected === null || typeof expected !== "object") return Object.is(expected, actual);
  if (actual === null || typeof actual !== "object") return false;
  return Object.entries(expected as Record<string, unknown>).every(([key, value]) => isSubset(value, (actual as Record<string, unknown>)[key]));
}

/** Every frame id `id` that arrived so far. */
export function framesWithId(client: TestClient, id: number): Frame[] {
  return client.frames.filter((frame) => frame.type !== "event" && frame.id === id);
}

/** Sends one request frame built by hand (no id bookkeeping in TestClient). */
export function sendFrame(client: TestClient, frame: Record<string, unknown>): void {
  client.sendRaw(`${JSON.stringify(frame)}\n`);
}

/** Message ids in a conversation's full history, oldest first (pages through with `before`). */
export async function historyIds(client: TestClient, conversation: string): Promise<number[]> {
  const ids: number[] = [];
  let before: number | undefined;
  for (;;) {
    const page = await client.ok("history", before === undefined ? { conversation, limit: 500 } : { conversation, before, limit: 500 });
    const messages = page.messages as { id: number }[];
    ids.unshift(...messages.map((message) => message.id));
    if (messages.length < 500) return ids;
    before = messages[0].id;
  }
}
