// Launches the local Chat+ cluster and lets you watch it and break it by hand.
// Logs from each server go to data/server-N.log in full; the important lines are echoed here,
// prefixed and coloured. Type `help` for the commands.
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, rmSync, writeFileSync, type WriteStream } from "node:fs";
import net from "node:net";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { defaultClusterConfig, loadClusterConfig, serverProcessEnv, type ClusterConfig, type Machine } from "./connections/consts.js";
import { encodeFrame, LineReader } from "./connections/framing.js";
import type { ServerStatus } from "./connections/schema.js";

const usage = `Usage: npm start -- [options]

Starts a local Chat+ cluster (3 servers by default) and an interactive console.

Options:
  --servers N     how many servers to start (default 3; ports follow consts.ts)
  --spares N      extra machines in the config that 'add' can start later (default 2)
  --config FILE   use this cluster config instead of generating one
  --data DIR      where data directories and logs go (default ./data)
  --fresh         wipe the data directories first
  -h, --help      show this help

Console commands:
  status          print the status table
  kill N          kill -9 server N
  pause N         freeze server N (SIGSTOP)
  resume N        unfreeze server N (SIGCONT)
  restart N       (re)start server N
  stop N          stop server N cleanly (SIGTERM)
  add             start the next spare server; it joins the running cluster
  help            this list
  quit            stop every server and exit (Ctrl-C does the same)
`;

const colours = [36, 33, 35, 32, 34, 91, 92, 93];
const paint = (code: number, text: string) => (process.stdout.isTTY ? `\x1b[${code}m${text}\x1b[0m` : text);

/** logFile is opened when the server is first started: a spare that never ran has none. */
type Server = { machine: Machine; child?: ChildProcess; logFile?: WriteStream; paused: boolean };
type Statuses = Map<number, (ServerStatus & { rttMs: number }) | undefined>;

class Runner {
  private readonly servers = new Map<number, Server>();
  private lastShape = "";
  private readonly lastEntry = new Map<number, unknown>();
  private watching = false;
  private quitting = false;
  private readonly poller: NodeJS.Timeout;

  constructor(
    private readonly config: ClusterConfig,
    private readonly configPath: string,
    private readonly dataDir: string,
  ) {
    for (const machine of [...config.machines].sort((a, b) => a.id - b.id)) this.servers.set(machine.id, { machine, paused: false });
    this.poller = setInterval(() => void this.watchShape(), 1000);
  }

  start(id: number): void {
    const server = this.servers.get(id);
    if (!server) return this.say(`no server ${id} in the config`);
    if (server.child) return this.say(`server ${id} is already running (pid ${server.child.pid})`);
    const child = spawn(
      process.execPath,
      ["--import", "tsx", resolve(import.meta.dirname, "server.ts"), "--id", String(id), "--config", this.configPath, "--data", join(this.dataDir, `server-${id}`)],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...serverProcessEnv } },
    );
    server.child = child;
    server.paused = false;
    server.logFile ??= createWriteStream(join(this.dataDir, `server-${id}.log`), { flags: "a" });
    const logFile = server.logFile;
    const prefix = paint(colours[(id - 1) % colours.length], `[server ${id}]`);
    const reader = new LineReader(1 << 20, { onFrame: (line) => this.onLogLine(prefix, line), onOversize: () => {} });
    child.stdout!.on("data", (data: Buffer) => {
      logFile.write(data);
      reader.push(data);
    });
    child.stderr!.on("data", (data: Buffer) => process.stdout.write(`${prefix} ${data}`));
    child.on("exit", (code, signal) => {
      if (server.child === child) server.child = undefined;
      if (!this.quitting) this.say(`${prefix} exited (${signal ?? `code ${code}`})`);
    });
    this.say(`${prefix} started, pid ${child.pid}`);
  }

  signal(id: number, signal: NodeJS.Signals): void {
    const server = this.servers.get(id);
    if (!server?.child?.pid) return this.say(`server ${id} is not running`);
    process.kill(server.child.pid, signal);
    if (signal === "SIGSTOP") server.paused = true;
    if (signal === "SIGCONT") server.paused = false;
    this.say(`sent ${signal} to server ${id} (pid ${server.child.pid})`);
  }

  /** Kills server N if it runs (even paused), then starts it again on the same data directory. */
  async restart(id: number): Promise<void> {
    const server = this.servers.get(id);
    if (!server) return this.say(`no server ${id} in the config`);
    const child = server.child;
    if (child?.pid) {
      const exited = new Promise<void>((done) => child.once("exit", () => done()));
      process.kill(child.pid, "SIGKILL");
      await exited;
    }
    this.start(id);
  }

  /** Machines in the config that this runner has not started yet: what `add` can start. */
  spares(): Machine[] {
    return [...this.servers.values()].filter((server) => !server.logFile).map((server) => server.machine);
  }

  add(): void {
    const spare = this.spares()[0];
    if (!spare) return this.say("no spare machine left in the config (start with --spares N)");
    this.start(spare.id);
  }

  private onLogLine(prefix: string, line: string): void {
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line);
    } catch {
      return void process.stdout.write(`${prefix} ${line}\n`);
    }
    const level = Number(entry.level);
    const message = String(entry.msg ?? "");
    const important = level >= 40 || ["role change", "proposing config", "listening", "peer link up", "peer link down", "shutting down"].includes(message);
    if (!important) return;
    const { level: _level, time: _time, server: _server, msg: _msg, component: _component, pid: _pid, hostname: _hostname, ...details } = entry;
    const detail = Object.keys(details).length > 0 ? ` ${JSON.stringify(details)}` : "";
    const text = level >= 50 ? paint(31, message) : level >= 40 ? paint(33, message) : message;
    process.stdout.write(`${prefix} ${text}${detail}\n`);
  }

  /** Pings every running server; the map is in reply order, so read it by id. */
  async statuses(): Promise<Statuses> {
    const result: Statuses = new Map();
    await Promise.all(
      [...this.servers.values()].map(async (server) => {
        result.set(server.machine.id, server.child && !server.paused ? await ping(server.machine) : undefined);
      }),
    );
    return result;
  }

  /** Prints the table of every server started so far (and the initial members), in id order. */
  async printStatus(statuses?: Statuses): Promise<void> {
    statuses ??= await this.statuses();
    if (this.quitting) return;
    const primary = [...statuses.values()].find((status) => status?.role === "primary");
    const rows = [["id", "pid", "state", "role", "epoch", "last index", "in-sync", "lag (entries)", "ping ms"]];
    for (const server of this.servers.values()) {
      const status = statuses.get(server.machine.id);
      const state = !server.child ? "down" : server.paused ? "paused" : status ? "up" : "no answer";
      if (!server.logFile && !(this.config.initialMembers ?? []).includes(server.machine.id)) continue;
      rows.push([
        String(server.machine.id),
        String(server.child?.pid ?? "-"),
        state,
        status?.role ?? "-",
        String(status?.epoch ?? "-"),
        String(status?.lastIndex ?? "-"),
        !server.child ? "no" : primary && status ? (primary.members.includes(server.machine.id) ? "yes" : "no") : "-",
        primary && status ? String(Math.max(0, primary.lastIndex - status.lastIndex)) : "-",
        status ? String(status.rttMs) : "-",
      ]);
    }
    const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
    const lines = rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column])).join("  "));
    process.stdout.write(`${paint(1, lines[0])}\n${lines.slice(1).join("\n")}\n`);
  }

  /**
   * Prints the table by itself when a server goes up, down or paused, or a role, an epoch or the
   * in-sync set (the primary's members) changes; last index, lag and ping alone do not reprint it.
   */
  private async watchShape(): Promise<void> {
    if (this.watching) return;
    this.watching = true;
    try {
      const statuses = await this.statuses();
      if (this.quitting) return;
      // In id order (this.servers is sorted), not in the order the pings were answered.
      // A running server that missed one ping (a busy machine) keeps its last known shape: no reprint.
      // A down or paused server leaving the in-sync set changes nothing on screen (it shows "no" or "-").
      const answering = (id: number) => Boolean(this.servers.get(id)?.child && !this.servers.get(id)?.paused);
      const shape = JSON.stringify(
        [...this.servers.values()].map((server) => {
          const id = server.machine.id;
          const status = statuses.get(id);
          const members = status?.role === "primary" ? status.members.filter(answering).sort((a, b) => a - b) : null;
          const entry = status ? ["up", status.role, status.epoch, members] : server.child && !server.paused ? this.lastEntry.get(id) : [server.paused ? "paused" : "down"];
          this.lastEntry.set(id, entry);
          return [id, entry];
        }),
      );
      if (shape === this.lastShape) return;
      this.lastShape = shape;
      await this.printStatus(statuses);
    } finally {
      this.watching = false;
    }
  }

  say(text: string): void {
    process.stdout.write(`${paint(90, "runner")} ${text}\n`);
  }

  async quit(): Promise<void> {
    if (this.quitting) return;
    this.quitting = true;
    clearInterval(this.poller);
    this.say("stopping every server ...");
    const exits = [...this.servers.values()]
      .filter((server) => server.child?.pid)
      .map((server) => {
        const child = server.child!;
        const exited = new Promise<void>((done) => child.once("exit", () => done()));
        if (server.paused) process.kill(child.pid!, "SIGCONT");
        process.kill(child.pid!, "SIGTERM");
        const timer = setTimeout(() => child.pid && process.kill(child.pid, "SIGKILL"), 3000);
        return exited.then(() => clearTimeout(timer));
      });
    await Promise.all(exits);
    for (const server of this.servers.values()) server.logFile?.end();
    this.say("all servers stopped");
  }
}

function ping(machine: Machine): Promise<(ServerStatus & { rttMs: number }) | undefined> {
  return new Promise((done) => {
    const started = performance.now();
    const socket = net.connect({ host: machine.host, port: machine.clientPort });
    const timer = setTimeout(() => finish(undefined), 800);
    const finish = (status: (ServerStatus & { rttMs: number }) | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      done(status);
    };
    const reader = new LineReader(1 << 16, {
      onFrame: (line) => {
        try {
          const frame = JSON.parse(line);
          finish(frame.type === "ok" ? { ...frame.data, rttMs: Math.round(performance.now() - started) } : undefined);
        } catch {
          finish(undefined);
        }
      },
      onOversize: () => finish(undefined),
    });
    socket.on("connect", () => socket.write(encodeFrame({ v: 1, id: 1, type: "ping" })));
    socket.on("data", (data) => reader.push(data));
    socket.on("error", () => finish(undefined));
  });
}

function buildConfig(servers: number, spares: number): ClusterConfig {
  const base = defaultClusterConfig.machines[0];
  const machines: Machine[] = [];
  for (let i = 0; i < servers + spares; i += 1) {
    machines.push({ id: i + 1, host: base.host, clientPort: base.clientPort + i, peerPort: base.peerPort + i });
  }
  return { machines, clusterSecret: defaultClusterConfig.clusterSecret, initialMembers: machines.slice(0, servers).map((machine) => machine.id) };
}

async function main(): Promise<void> {
  let args;
  try {
    args = parseArgs({
      strict: true,
      options: {
        servers: { type: "string", default: "3" },
        spares: { type: "string", default: "2" },
        config: { type: "string" },
        data: { type: "string", default: "data" },
        fresh: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if (args.help) return void process.stdout.write(usage);
  const servers = Number(args.servers);
  const spares = Number(args.spares);
  if (!Number.isInteger(servers) || servers < 1 || servers > 9 || !Number.isInteger(spares) || spares < 0 || spares > 4) {
    process.stderr.write("error: --servers must be 1..9 and --spares 0..4\n");
    process.exitCode = 2;
    return;
  }
  const dataDir = resolve(args.data!);
  if (args.fresh) rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  let config: ClusterConfig;
  let configPath: string;
  if (args.config) {
    config = loadClusterConfig(args.config);
    configPath = resolve(args.config);
  } else {
    config = buildConfig(servers, spares);
    configPath = join(dataDir, "cluster.json");
    writeFileSync(configPath, `${JSON.stringify(config, null, 2)}\n`);
  }
  const runner = new Runner(config, configPath, dataDir);
  for (const id of config.initialMembers ?? config.machines.map((machine) => machine.id)) runner.start(id);
  runner.say(`cluster config: ${configPath}`);
  const idle = runner.spares();
  if (idle.length > 0) {
    const list = idle.map((machine) => `${machine.id} (port ${machine.clientPort})`).join(", ");
    runner.say(`spare machines for 'add', in the config but not started: ${list}`);
  }
  runner.say(`open a client in another terminal:  npm run client -- --config ${configPath}`);
  runner.say("type 'help' for commands; Ctrl-C stops everything");

  const console = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
  const shutdown = async () => {
    await runner.quit();
    console.close();
    process.exitCode = 0;
  };
  process.once("SIGINT", () => void shutdown());
  process.once("SIGTERM", () => void shutdown());
  console.on("line", (line) => {
    const [command, argument] = line.trim().split(/\s+/);
    const id = Number(argument);
    switch (command) {
      case "":
        return;
      case "status":
        return void runner.printStatus();
      case "kill":
        return runner.signal(id, "SIGKILL");
      case "pause":
        return runner.signal(id, "SIGSTOP");
      case "resume":
        return runner.signal(id, "SIGCONT");
      case "stop":
        return runner.signal(id, "SIGTERM");
      case "restart":
        return void runner.restart(id);
      case "add":
        return runner.add();
      case "help":
        return void process.stdout.write(usage.slice(usage.indexOf("Console commands:")));
      case "quit":
      case "exit":
        return void shutdown();
      default:
        runner.say(`unknown command ${JSON.stringify(command)}; type 'help'`);
    }
  });
  console.on("close", () => void shutdown());
}

void main();
