// Real server processes for tests: free ports, temp data directories, and cleanup by PID.
import { execa, type ResultPromise } from "execa";
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { serverProcessEnv, type ClusterConfig, type Machine } from "../../connections/consts.js";
import { TestClient } from "./client.js";
import { LinkProxy } from "../fault/proxy.js";

export const repoRoot = resolve(import.meta.dirname, "../..");

/**
 * Ports that were free a moment ago. They are taken below the kernel's ephemeral range, where port 0
 * and outgoing connections get theirs: a killed server's port is otherwise free for any connection's
 * source port until it restarts (peer probes and clients make many), and the restart then fails
 * with EADDRINUSE. Each is checked by binding it; without a readable range, port 0 is used.
 */
export async function freePorts(count: number): Promise<number[]> {
  const below = ephemeralRangeStart();
  const ports: number[] = [];
  while (ports.length < count) {
    const candidate = below === undefined ? 0 : portsFloor + Math.floor(Math.random() * (below - portsFloor));
    if (candidate !== 0 && (ports.includes(candidate) || handedOut.has(candidate))) continue;
    const port = await bindable(candidate);
    if (port === undefined) continue;
    ports.push(port);
    handedOut.add(port);
  }
  return ports;
}

/** Lowest port freePorts picks from (below it: well-known and registered services). */
const portsFloor = 10_000;
/** Ports this process handed out already: parallel clusters of one test file never share one. */
const handedOut = new Set<number>();

function ephemeralRangeStart(): number | undefined {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > portsFloor + 1000 ? low : undefined;
  } catch {
    return undefined;
  }
}

/** Binds and releases 127.0.0.1:port (0 = any); returns the port, or undefined if it was taken. */
function bindable(port: number): Promise<number | undefined> {
  return new Promise((done) => {
    const server = net.createServer();
    server.once("error", () => done(undefined));
    server.listen(port, "127.0.0.1", () => {
      const bound = (server.address() as net.AddressInfo).port;
      server.close(() => done(bound));
    });
  });
}

export type ClusterOptions = {
  servers: number;
  /** Machines listed in the config but not started and not initial members (to add later). */
  spareServers?: number;
  hosts?: string[];
  /** Extra environment for the server processes. */
  env?: Record<string, string>;
  /** Wrap the command, e.g. ["ip", "netns", "exec", "ns1"] per server id. */
  wrap?: (id: number) => string[];
  /** Route every peer link through a LinkProxy (for network-fault tests). */
  proxyLinks?: boolean;
  /** Seeded randomness for the proxies' drop decisions. */
  random?: () => number;
  /** Extra node arguments before server.ts (e.g. a planted-bug preload). */
  nodeArgs?: string[];
};

export class TestCluster {
  readonly dir: string;
  readonly config: ClusterConfig;
  readonly configPath: string;
  private readonly processes = new Map<number, ResultPromise>();
  private readonly clients: TestClient[] = [];
  /** Proxies by "i-j" (i dials j), when proxyLinks is on. */
  readonly proxies = new Map<string, LinkProxy>();

  private constructor(dir: string, config: ClusterConfig, private readonly options: ClusterOptions) {
    this.dir = dir;
    this.config = config;
    this.configPath = join(dir, "cluster.json");
    writeFileSync(this.configPath, JSON.stringify(config, null, 2));
  }

  static async create(options: ClusterOptions): Promise<TestCluster> {
    const total = options.servers + (options.spareServers ?? 0);
    const ports = await freePorts(total * 2);
    const machines: Machine[] = [];
    for (let i = 0; i < total; i += 1) {
      machines.push({ id: i + 1, host: options.hosts?.[i] ?? "127.0.0.1", clientPort: ports[2 * i], peerPort: ports[2 * i + 1] });
    }
    const config: ClusterConfig = {
      machines,
      clusterSecret: "test-cluster-secret",
      initialMembers: machines.slice(0, options.servers).map((machine) => machine.id),
    };
    const dir = mkdtempSync(join(tmpdir(), "chatplus-"));
    const cluster = new TestCluster(dir, config, options);
    if (options.proxyLinks) await cluster.setUpProxies();
    return cluster;
  }

  /** One proxy per pair; server i's own config file points its dial to j at the proxy. */
  private async setUpProxies(): Promise<void> {
    const random = this.options.random ?? Math.random;
    const order = this.config.machines.map((machine) => machine.id);
    for (const dialer of this.config.machines) {
      const machines = [];
      for (const target of this.config.machines) {
        if (order.indexOf(dialer.id) >= order.indexOf(target.id)) {
          machines.push(target);
          continue;
        }
        const proxy = new LinkProxy(dialer.id, target.id, target.peerPort, random);
        await proxy.listen();
        this.proxies.set(`${dialer.id}-${target.id}`, proxy);
        machines.push({ ...target, peerPort: proxy.port });
      }
      writeFileSync(this.configFileFor(dialer.id), JSON.stringify({ ...this.config, machines }, null, 2));
    }
  }

  /** The proxy carrying the link between servers a and b (either order). */
  proxy(a: number, b: number): LinkProxy {
    const proxy = this.proxies.get(`${Math.min(a, b)}-${Math.max(a, b)}`);
    if (!proxy) throw new Error(`no proxy between ${a} and ${b} (create the cluster with proxyLinks)`);
    return proxy;
  }

  /** Faults on frames sent by server `from` to server `to`. */
  link(from: number, to: number) {
    const proxy = this.proxy(from, to);
    return from === proxy.from ? proxy.forward : proxy.backward;
  }

  private configFileFor(id: number): string {
    return this.options.proxyLinks ? join(this.dir, `cluster-${id}.json`) : this.configPath;
  }

  machine(id: number): Machine {
    const machine = this.config.machines.find((candidate) => candidate.id === id);
    if (!machine) throw new Error(`no machine ${id}`);
    return machine;
  }

  dataDir(id: number): string {
    return join(this.dir, `server-${id}`);
  }

  logFile(id: number): string {
    return join(this.dir, `server-${id}.log`);
  }

  pid(id: number): number | undefined {
    return this.processes.get(id)?.pid;
  }

  isRunning(id: number): boolean {
    return this.processes.has(id);
  }

  /** Starts server `id` and resolves once it accepts client connections. */
  async start(id: number): Promise<void> {
    if (this.processes.has(id)) throw new Error(`server ${id} already running`);
    const args = ["--import", "tsx", ...(this.options.nodeArgs ?? []), join(repoRoot, "server.ts"), "--id", String(id), "--config", this.configFileFor(id), "--data", this.dataDir(id), "--log-file", this.logFile(id)];
    const wrap = this.options.wrap?.(id) ?? [];
    const command = wrap.length > 0 ? wrap[0] : process.execPath;
    const fullArgs = wrap.length > 0 ? [...wrap.slice(1), process.execPath, ...args] : args;
    const child = execa(command, fullArgs, { cwd: repoRoot, reject: false, stdio: ["ignore", "ignore", "pipe"], env: { ...serverProcessEnv, ...this.options.env }, cleanup: true });
    this.processes.set(id, child);
    child.then(() => this.processes.get(id) === child && this.processes.delete(id));
    const machine = this.machine(id);
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      if (!this.processes.has(id)) throw new Error(`server ${id} exited during startup: ${(await child).stderr}`);
      if (await canConnect(machine.host, machine.clientPort)) return;
      await sleep(50);
    }
    throw new Error(`server ${id} did not start listening`);
  }

  async startAll(ids = this.config.initialMembers ?? []): Promise<void> {
    await Promise.all(ids.map((id) => this.start(id)));
  }

  /** Sends a signal to server `id` by PID; for SIGKILL/SIGTERM, waits for it to exit. */
  async signal(id: number, signal: "SIGKILL" | "SIGTERM" | "SIGSTOP" | "SIGCONT"): Promise<void> {
    const child = this.processes.get(id);
    if (!child?.pid) throw new Error(`server ${id} is not running`);
    process.kill(child.pid, signal);
    if (signal === "SIGKILL" || signal === "SIGTERM") {
      await child;
      this.processes.delete(id);
    }
  }

  kill(id: number): Promise<void> {
    return this.signal(id, "SIGKILL");
  }

  async restart(id: number): Promise<void> {
    if (this.processes.has(id)) await this.kill(id);
    await this.start(id);
  }

  /** A raw protocol client connected to server `id`. */
  async client(id: number): Promise<TestClient> {
    const machine = this.machine(id);
    const client = await TestClient.connect(machine.host, machine.clientPort);
    this.clients.push(client);
    return client;
  }

  async status(id: number): Promise<{ role: string; epoch: number; primaryId: number | null; commitIndex: number; lastIndex: number; appliedIndex: number; members: number[] } | undefined> {
    if (!this.processes.has(id)) return undefined;
    try {
      const client = await TestClient.connect(this.machine(id).host, this.machine(id).clientPort);
      try {
        const reply = await client.request("ping", {}, 1000);
        return reply.data as { role: string; epoch: number; primaryId: number | null; commitIndex: number; lastIndex: number; appliedIndex: number; members: number[] };
      } finally {
        client.close();
      }
    } catch {
      return undefined;
    }
  }

  /** Waits until some running server reports itself serving as primary; returns its id. */
  async waitForPrimary(timeoutMs = 15000, among?: number[]): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const id of among ?? [...this.processes.keys()]) {
        const status = await this.status(id);
        if (status?.role === "primary") return id;
      }
      await sleep(50);
    }
    throw new Error(`no primary within ${timeoutMs} ms`);
  }

  /**
   * Waits until every listed server is in the in-sync set (as reported by the primary's config), caught
   * up, and has applied its log: each has logged and applied at least what the primary held just before
   * it was asked. With no writes running, that is the primary's whole log. With writes running, the
   * servers' last indexes rarely match at one instant; what the primary held a moment earlier does not move.
   */
  async waitForInSync(ids: number[], timeoutMs = 20000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      const primary = await this.waitForPrimary(timeoutMs);
      const primaryStatus = await this.status(primary);
      const statuses = await Promise.all(ids.map((id) => this.status(id)));
      last = JSON.stringify(statuses);
      const floor = primaryStatus?.lastIndex;
      const caughtUp = (status: (typeof statuses)[number]) =>
        floor !== undefined && status !== undefined && (status.role === "backup" || status.role === "primary") && status.lastIndex >= floor && status.appliedIndex === status.lastIndex;
      if (statuses.every(caughtUp)) {
        const members = this.membersFromLog(primary);
        if (ids.every((id) => members.includes(id))) return;
      }
      await sleep(100);
    }
    throw new Error(`servers ${ids.join(",")} not in sync within ${timeoutMs} ms: ${last}`);
  }

  /** The newest config entry in a server's log (read from its SQLite file). */
  latestConfig(id: number): { epoch: number; members: number[] } {
    const db = openReadOnly(join(this.dataDir(id), "chat.db"));
    try {
      const row = db.prepare("SELECT epoch, body FROM log WHERE kind = 'config' ORDER BY idx DESC LIMIT 1").get() as { epoch: number; body: string } | undefined;
      return row ? { epoch: row.epoch, members: JSON.parse(row.body).members as number[] } : { epoch: 0, members: [] };
    } finally {
      db.close();
    }
  }

  /** Members of the newest config entry in a server's log (read from its SQLite file). */
  membersFromLog(id: number): number[] {
    const db = openReadOnly(join(this.dataDir(id), "chat.db"));
    try {
      const row = db.prepare("SELECT body FROM log WHERE kind = 'config' ORDER BY idx DESC LIMIT 1").get() as { body: string } | undefined;
      return row ? (JSON.parse(row.body).members as number[]) : [];
    } finally {
      db.close();
    }
  }

  /** Stops every process this cluster started (by PID), closes clients, removes the data directory. */
  async destroy(options: { keepData?: boolean } = {}): Promise<void> {
    for (const client of this.clients) client.close();
    for (const proxy of this.proxies.values()) proxy.close();
    for (const [, child] of this.processes) {
      if (child.pid) {
        try {
          process.kill(child.pid, "SIGCONT");
          process.kill(child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    await Promise.all([...this.processes.values()].map((child) => child.catch(() => {})));
    this.processes.clear();
    if (!options.keepData && !process.env.CHATPLUS_KEEP_TEST_DATA) rmSync(this.dir, { recursive: true, force: true });
  }

  readLog(id: number): string {
    return existsSync(this.logFile(id)) ? readFileSync(this.logFile(id), "utf8") : "";
  }
}

import Database from "better-sqlite3";
export function openReadOnly(path: string): Database.Database {
  return new Database(path, { readonly: true, fileMustExist: true });
}

export function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}
