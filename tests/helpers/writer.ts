// A deliberately simple retrying writer for replication scenarios: it finds the primary by pinging,
// retries each post with the SAME client id and request id until it is acknowledged, and records
// the outcome of every write (acked, or unknown when its budget ran out). It does not use the
// ClientConnector, so the scenarios test the servers' guarantees on their own.
import { logDigestOf, stateDigestOf } from "../../store/store.js";
import { TestClient } from "./client.js";
import { openReadOnly, sleep, type TestCluster } from "./cluster.js";

export type WriteRecord = { body: string; requestId: number; outcome: "ok" | "unknown"; ackedAt?: number; messageId?: number };

/** Errors after which a post is retried elsewhere: it changed nothing, or the server is not the primary. */
const retryableCodes = new Set(["CHAT_ERR_NOT_PRIMARY", "CHAT_ERR_UNAVAILABLE", "CHAT_ERR_NOT_LOGGED_IN"]);

export class RetryingWriter {
  readonly records: WriteRecord[] = [];
  private client: TestClient | undefined;
  private token: string | undefined;
  private nextId = 1;
  private stopped = false;
  private loop: Promise<void> | undefined;
  readonly clientId: string;

  constructor(
    private readonly cluster: TestCluster,
    readonly username: string,
    private readonly channel = "general",
    private readonly writeBudgetMs = 20000,
  ) {
    this.clientId = `writer-${username}`;
  }

  get acked(): WriteRecord[] {
    return this.records.filter((record) => record.outcome === "ok");
  }

  /** Registers (once) and starts posting continuously until stop(). */
  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    this.client?.close();
  }

  /** Posts `count` messages, one at a time, each retried until acknowledged. */
  async write(count: number): Promise<void> {
    for (let n = 0; n < count; n += 1) await this.writeOne();
  }

  /** Posts `count` messages, `inFlight` at a time on one connection, each retried like write's. */
  async writePipelined(count: number, inFlight: number): Promise<void> {
    for (let done = 0; done < count; done += inFlight) {
      await this.post(Array.from({ length: Math.min(inFlight, count - done) }, () => this.nextId++));
    }
  }

  private async run(): Promise<void> {
    while (!this.stopped) await this.writeOne();
  }

  private writeOne(): Promise<void> {
    return this.post([this.nextId++]);
  }

  /**
   * Posts one message per request id, all at once, and re-sends those not acknowledged (same request
   * ids) on a new connection to the primary until they are, or the budget runs out (unknown).
   */
  private async post(requestIds: number[]): Promise<void> {
    const body = (requestId: number) => `${this.username}:${requestId}`;
    let pending = requestIds;
    const deadline = Date.now() + this.writeBudgetMs;
    while (Date.now() < deadline) {
      try {
        const client = await this.connected();
        const frames = await Promise.all(pending.map((requestId) => client.request("post", { channel: this.channel, body: body(requestId) }, 3000, requestId).catch(() => undefined)));
        pending = pending.filter((requestId, position) => {
          const frame = frames[position];
          if (frame?.type === "ok") {
            this.records.push({ body: body(requestId), requestId, outcome: "ok", ackedAt: Date.now(), messageId: frame.data!.message.id as number });
            return false;
          }
          if (frame?.type === "error" && !retryableCodes.has(frame.code!)) throw new Error(`post failed for good: ${frame.code} ${frame.message}`);
          return true;
        });
        if (pending.length === 0) return;
      } catch (error) {
        if ((error as Error).message.startsWith("post failed for good")) throw error;
      }
      this.client?.close();
      this.client = undefined;
      await sleep(30);
    }
    for (const requestId of pending) this.records.push({ body: body(requestId), requestId, outcome: "unknown" });
  }

  /** A logged-in connection to the current primary. */
  private async connected(): Promise<TestClient> {
    if (this.client && !this.client.closed) return this.client;
    const primary = await this.cluster.waitForPrimary(15000);
    const client = await this.cluster.client(primary);
    const hello = await client.request("hello", { clientId: this.clientId }, 2000, this.nextId++);
    if (hello.type !== "ok") throw new Error("hello failed");
    if (this.token) {
      const auth = await client.request("auth", { token: this.token }, 3000, this.nextId++);
      if (auth.type !== "ok") throw new Error(`auth failed: ${auth.code}`);
    } else {
      const id = this.nextId++;
      let frame = await client.request("register", { username: this.username, password: "password123" }, 5000, id);
      if (frame.type === "error" && frame.code === "CHAT_ERR_NAME_TAKEN") {
        frame = await client.request("login", { username: this.username, password: "password123" }, 5000, this.nextId++);
      }
      if (frame.type !== "ok") throw new Error(`register failed: ${frame.code}`);
      this.token = frame.data!.token;
    }
    this.client = client;
    return client;
  }
}

export type ServerSnapshot = { id: number; lastIndex: number; applied: boolean; logDigest: string; stateDigest: string; bodies: Map<string, number>; epochs: number[] };

/** Reads a server's SQLite file (read-only, safe while it runs) and summarizes it. */
export function snapshot(cluster: TestCluster, id: number): ServerSnapshot {
  const db = openReadOnly(`${cluster.dataDir(id)}/chat.db`);
  try {
    const lastIndex = (db.prepare("SELECT coalesce(max(idx), 0) AS n FROM log").get() as { n: number }).n;
    const bodies = new Map<string, number>();
    for (const row of db.prepare("SELECT body FROM messages WHERE deleted_seq IS NULL").iterate() as Iterable<{ body: string }>) {
      bodies.set(row.body, (bodies.get(row.body) ?? 0) + 1);
    }
    const epochs = (db.prepare("SELECT epoch FROM log ORDER BY idx").all() as { epoch: number }[]).map((row) => row.epoch);
    // Store keeps an applied_index meta row only while its state tables are behind its log.
    const applied = db.prepare("SELECT 1 FROM meta WHERE key = 'applied_index'").get() === undefined;
    return { id, lastIndex, applied, logDigest: logDigestOf(db, lastIndex), stateDigest: stateDigestOf(db), bodies, epochs };
  } finally {
    db.close();
  }
}

export type InvariantReport = { acked: number; unknown: number; found: number; servers: number[]; lastIndex: number; epochs: number[] };

/**
 * Checks the replication invariants on the listed (running, caught-up) servers:
 * every acknowledged write is present exactly once on each, unknown writes at most once,
 * logs and state identical, epochs never decrease along the log.
 */
export async function checkInvariants(cluster: TestCluster, writers: RetryingWriter[], servers: number[]): Promise<InvariantReport> {
  // Let replication settle: every server reaches the same last index.
  const deadline = Date.now() + 20000;
  let snapshots: ServerSnapshot[] = [];
  while (Date.now() < deadline) {
    snapshots = servers.map((id) => snapshot(cluster, id));
    if (snapshots.every((snap) => snap.applied && snap.lastIndex === snapshots[0].lastIndex && snap.logDigest === snapshots[0].logDigest)) break;
    await sleep(100);
  }
  const problems: string[] = [];
  const reference = snapshots[0];
  for (const snap of snapshots) {
    if (!snap.applied) problems.push(`server ${snap.id} has logged entries it has not applied`);
    if (snap.logDigest !== reference.logDigest) problems.push(`server ${snap.id} log differs from server ${reference.id} (last index ${snap.lastIndex} vs ${reference.lastIndex})`);
    if (snap.stateDigest !== reference.stateDigest) problems.push(`server ${snap.id} state differs from server ${reference.id}`);
    for (let i = 1; i < snap.epochs.length; i += 1) {
      if (snap.epochs[i] < snap.epochs[i - 1]) problems.push(`server ${snap.id}: epoch decreases at index ${i + 1}`);
    }
    for (const writer of writers) {
      for (const record of writer.records) {
        const count = snap.bodies.get(record.body) ?? 0;
        if (record.outcome === "ok" && count !== 1) problems.push(`server ${snap.id}: acknowledged ${record.body} present ${count} times`);
        if (record.outcome === "unknown" && count > 1) problems.push(`server ${snap.id}: unknown ${record.body} present ${count} times`);
      }
    }
  }
  if (problems.length > 0) throw new Error(`invariants violated:\n  ${problems.slice(0, 20).join("\n  ")}`);
  const acked = writers.reduce((sum, writer) => sum + writer.acked.length, 0);
  const unknown = writers.reduce((sum, writer) => sum + writer.records.length - writer.acked.length, 0);
  const found = writers.reduce((sum, writer) => sum + writer.records.filter((record) => (reference.bodies.get(record.body) ?? 0) > 0).length, 0);
  return { acked, unknown, found, servers, lastIndex: reference.lastIndex, epochs: [...new Set(reference.epochs)] };
}

export function describe(report: InvariantReport): string {
  return `acknowledged ${report.acked}, unknown ${report.unknown}, found ${report.found} on servers ${report.servers.join(",")}; log ${report.lastIndex} entries, epochs ${report.epochs.join("→")}`;
}
