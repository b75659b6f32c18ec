// A minimal protocol client for tests: raw TCP, newline-delimited JSON, no retries, no failover.
import { randomBytes } from "node:crypto";
import net from "node:net";
import { encodeFrame, LineReader } from "../../connections/framing.js";

export type Frame = { v: number; type: "ok" | "error" | "event"; id?: number; data?: Record<string, any>; code?: string; message?: string; seq?: number; event?: any; primary?: any; retryAfterMs?: number };

export class TestClient {
  readonly frames: Frame[] = [];
  readonly events: Frame[] = [];
  private nextId = 1;
  private readonly waiters = new Map<number, (frame: Frame) => void>();
  private eventWaiters: (() => void)[] = [];
  closed = false;

  private constructor(readonly socket: net.Socket) {
    const reader = new LineReader(16 * 1024 * 1024, {
      onFrame: (line) => this.onFrame(JSON.parse(line) as Frame),
      onOversize: () => socket.destroy(),
    });
    socket.on("data", (data) => reader.push(data));
    socket.on("close", () => {
      this.closed = true;
    });
    socket.on("error", () => {});
  }

  static connect(host: string, port: number): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      socket.once("connect", () => resolve(new TestClient(socket)));
      socket.once("error", reject);
    });
  }

  private onFrame(frame: Frame): void {
    this.frames.push(frame);
    if (frame.type === "event") {
      this.events.push(frame);
      for (const waiter of this.eventWaiters.splice(0)) waiter();
      return;
    }
    const waiter = frame.id !== undefined ? this.waiters.get(frame.id) : undefined;
    if (waiter) {
      this.waiters.delete(frame.id!);
      waiter(frame);
    }
  }

  /** Sends a request (v and id filled in) and resolves with the response frame, ok or error. */
  request(type: string, fields: Record<string, unknown> = {}, timeoutMs = 10000, id = this.nextId++): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new Error(`no response to ${type} #${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(id, (frame) => {
        clearTimeout(timer);
        resolve(frame);
      });
      this.socket.write(encodeFrame({ v: 1, id, type, ...fields }));
    });
  }

  /** Like request, but throws unless the response is ok; returns its data. */
  async ok(type: string, fields: Record<string, unknown> = {}): Promise<Record<string, any>> {
    const frame = await this.request(type, fields);
    if (frame.type !== "ok") throw new Error(`${type} failed: ${frame.code} ${frame.message}`);
    return frame.data!;
  }

  /** Resolves with the error code of a request expected to fail. */
  async errorCode(type: string, fields: Record<string, unknown> = {}): Promise<string | undefined> {
    const frame = await this.request(type, fields);
    return frame.type === "error" ? frame.code : undefined;
  }

  sendRaw(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** Waits for the next frame with id 0 or any frame matching `predicate`. */
  async nextFrame(predicate: (frame: Frame) => boolean, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    let seen = 0;
    while (Date.now() < deadline) {
      for (; seen < this.frames.length; seen += 1) if (predicate(this.frames[seen])) return this.frames[seen];
      await new Promise((done) => setTimeout(done, 10));
    }
    throw new Error("expected frame did not arrive");
  }

  async waitForEvent(predicate: (frame: Frame) => boolean, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const found = this.events.find(predicate);
      if (found) return found;
      await new Promise<void>((done) => {
        const timer = setTimeout(done, Math.max(1, deadline - Date.now()));
        this.eventWaiters.push(() => {
          clearTimeout(timer);
          done();
        });
      });
    }
    throw new Error("expected event did not arrive");
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Registers a user on a fresh connection with a clientId; returns the logged-in client. */
export async function registeredClient(host: string, port: number, username: string, password = "password123"): Promise<TestClient> {
  const client = await TestClient.connect(host, port);
  await client.ok("hello", { clientId: `test-${username}-${Math.random().toString(36).slice(2, 10)}` });
  await client.ok("register", { username, password });
  return client;
}

/**
 * A raw connection to `machine` that has said hello with a fresh clientId (`prefix` and random
 * hex), handed to `use` and closed afterwards, whatever happens.
 */
export async function withRawClient<T>(machine: { host: string; clientPort: number }, prefix: string, use: (client: TestClient) => Promise<T>): Promise<T> {
  const client = await TestClient.connect(machine.host, machine.clientPort);
  try {
    await client.ok("hello", { clientId: `${prefix}-${randomBytes(4).toString("hex")}` });
    return await use(client);
  } finally {
    client.close();
  }
}
