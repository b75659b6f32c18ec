// The workload: registered users in small chat groups, each posting to its group's channel and
// sending DMs to a group peer, in a closed loop (one outstanding write per client) or pipelined.
import type { ClusterConfig } from "../connections/consts.js";
import { BenchClient, type Outcome, type PrimaryLocator } from "./client.js";
import { messageBodyBytes, setupConcurrencyMax, suspectAfterMs } from "./consts.js";

export const benchPassword = "bench-password-1";

/** 256 printable ASCII bytes that need no JSON escaping (and are not blank). */
export const messageBody = Array.from({ length: messageBodyBytes }, (_, i) => String.fromCharCode(97 + (i % 26))).join("");

export type WorkloadOptions = {
  config: ClusterConfig;
  primaryId: number;
  clients: number;
  groupSize: number;
  /** Short unique prefix for user and channel names (lower-case letters and digits). */
  tag: string;
  locator?: PrimaryLocator;
  progress?: (text: string) => void;
};

/**
 * Client i belongs to group floor(i / groupSize). Its writes alternate between a 256-byte post to
 * the group's channel (pushed to every online group member, the sender included) and a 256-byte DM
 * to the next member of the group (pushed to sender and recipient; a group of one DMs itself).
 */
export class Workload {
  readonly clients: BenchClient[] = [];
  private readonly postPrefix: string[] = [];
  private readonly dmPrefix: string[] = [];
  private readonly counters: number[] = [];

  private constructor(readonly options: WorkloadOptions) {}

  static async create(options: WorkloadOptions): Promise<Workload> {
    const workload = new Workload(options);
    await workload.setUp();
    return workload;
  }

  username(index: number): string {
    return `${this.options.tag}u${index}`;
  }

  channel(index: number): string {
    return `${this.options.tag}g${Math.floor(index / this.options.groupSize)}`;
  }

  private peer(index: number): number {
    const group = Math.floor(index / this.options.groupSize);
    const first = group * this.options.groupSize;
    const size = Math.min(this.options.groupSize, this.options.clients - first);
    return first + ((index - first + 1) % size);
  }

  /** The next write of client `index` as a complete request line with request id `id`. */
  line(index: number, id: number): string {
    const turn = this.counters[index]++;
    return `{"v":1,"id":${id},${turn % 2 === 0 ? this.postPrefix[index] : this.dmPrefix[index]}`;
  }

  close(): void {
    for (const client of this.clients) client.close();
  }

  /** Connect, hello, register, create or join the group channel: all through the real protocol. */
  private async setUp(): Promise<void> {
    const { config, primaryId, clients: count, tag, locator } = this.options;
    for (let index = 0; index < count; index += 1) {
      this.clients.push(new BenchClient(config, `bench-${tag}-${index}`, { locator }));
      this.counters.push(0);
      this.postPrefix.push(`"type":"post","channel":"${this.channel(index)}","body":"${messageBody}"}\n`);
      this.dmPrefix.push(`"type":"send_dm","to":"${this.username(this.peer(index))}","body":"${messageBody}"}\n`);
    }
    await forEachLimited(count, setupConcurrencyMax, async (index) => {
      const client = this.clients[index];
      await client.connect(primaryId);
      const registered = await client.call("register", { username: this.username(index), password: benchPassword }, true);
      if (!registered.ok) throw new Error(`register ${this.username(index)}: ${registered.code} ${registered.message}`);
      client.rememberToken(String(registered.data?.token));
    });
    this.options.progress?.(`  ${count} users registered`);
    const leaders = [...Array(count).keys()].filter((index) => index % this.options.groupSize === 0);
    await forEachLimited(leaders.length, setupConcurrencyMax, async (position) => {
      const index = leaders[position];
      expectOk(await this.clients[index].call("create_channel", { channel: this.channel(index) }), "create_channel");
    });
    const members = [...Array(count).keys()].filter((index) => index % this.options.groupSize !== 0);
    await forEachLimited(members.length, setupConcurrencyMax, async (position) => {
      const index = members[position];
      expectOk(await this.clients[index].call("join_channel", { channel: this.channel(index) }), "join_channel");
    });
  }
}

function expectOk(outcome: Outcome, what: string): void {
  if (!outcome.ok) throw new Error(`${what}: ${outcome.code} ${outcome.message}`);
}

/** Runs task(0..count-1) with at most `limit` at once. */
export async function forEachLimited(count: number, limit: number, task: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, count) }, async () => {
    while (next < count) {
      const index = next++;
      await task(index);
    }
  });
  await Promise.all(workers);
}

export type Ack = { client: number; sentAt: number; ackAt: number; outcome: Outcome };

export type LoopOptions = {
  /** Writes each client keeps in flight: 1 is a closed loop. */
  depth: number;
  /** Stop issuing after this many writes in total (bulk mode). */
  total?: number;
  /** Called for every answered write. */
  onAck: (ack: Ack) => void;
  /** Check for frozen primaries (failover phases): clients with a write older than suspectAfterMs ask the locator. */
  suspectFrozen?: boolean;
};

/** Drives a Workload until stop() (or until `total` writes were issued). */
export class LoadLoop {
  private stopping = false;
  private issued = 0;
  private loops: Promise<void>[] = [];
  private suspectTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly workload: Workload,
    private readonly options: LoopOptions,
  ) {}

  start(): void {
    for (const [index, client] of this.workload.clients.entries()) {
      for (let lane = 0; lane < this.options.depth; lane += 1) this.loops.push(this.run(index, client));
    }
    if (this.options.suspectFrozen) {
      this.suspectTimer = setInterval(() => {
        const now = performance.now();
        for (const client of this.workload.clients) if (client.oldestPendingMs(now) > suspectAfterMs) client.suspect();
      }, 10);
    }
  }

  /** Resolves when every issued write is answered (bulk mode) or after stop(). */
  finished(): Promise<void> {
    return Promise.all(this.loops).then(() => {
      if (this.suspectTimer) clearInterval(this.suspectTimer);
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.finished();
  }

  private async run(index: number, client: BenchClient): Promise<void> {
    const total = this.options.total ?? Infinity;
    while (!this.stopping && this.issued < total) {
      this.issued += 1;
      const id = client.nextRequestId();
      const sentAt = performance.now();
      const outcome = await client.send(id, this.workload.line(index, id));
      this.options.onAck({ client: index, sentAt, ackAt: performance.now(), outcome });
      if (!outcome.ok && outcome.code.startsWith("BENCH_")) return; // the client is gone
    }
  }
}
