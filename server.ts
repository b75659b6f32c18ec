// One Chat+ server process: a replica of the log (ConnectionManager) and, while it is the primary,
// the endpoint clients talk to (ClientService).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pino from "pino";
import { ClientService } from "./connections/clients.js";
import { loadClusterConfig } from "./connections/consts.js";
import { ConnectionManager } from "./connections/manager.js";
import { Store, type Durability } from "./store/store.js";

const usage = `Usage: npm run server -- --id N [options]

Starts one Chat+ server. Its address and its peers come from the machine list
(connections/consts.ts, or --config FILE).

Options:
  --id N             this server's machine id (required)
  --config FILE      cluster config JSON (machines, clusterSecret); default: 3 servers on 127.0.0.1
  --data DIR         data directory (default ./data/server-N); the SQLite file is DIR/chat.db
  --log-file FILE    write JSON logs here instead of stdout
  --log-level LEVEL  trace, debug, info (default), warn, error
  --durability MODE  full (default: fsync every commit) or normal (benchmarks only; not crash-safe)
  -h, --help         show this help
`;

function main(): void {
  let args;
  try {
    args = parseArgs({
      strict: true,
      options: {
        id: { type: "string" },
        config: { type: "string" },
        data: { type: "string" },
        "log-file": { type: "string" },
        "log-level": { type: "string", default: "info" },
        durability: { type: "string", default: "full" },
        help: { type: "boolean", short: "h" },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if (args.help) {
    process.stdout.write(usage);
    return;
  }
  const fail = (message: string) => {
    process.stderr.write(`error: ${message}\n`);
    process.exitCode = 2;
  };
  let cluster;
  try {
    cluster = loadClusterConfig(args.config);
  } catch (error) {
    return fail((error as Error).message);
  }
  const id = Number(args.id);
  const self = cluster.machines.find((machine) => machine.id === id);
  if (!args.id || !self) return fail(`--id must name a machine in the config (${cluster.machines.map((m) => m.id).join(", ")})`);
  if (args.durability !== "full" && args.durability !== "normal") return fail("--durability must be full or normal");
  if (!["trace", "debug", "info", "warn", "error"].includes(args["log-level"]!)) return fail("--log-level must be trace, debug, info, warn or error");

  const dataDir = args.data ?? join("data", `server-${id}`);
  mkdirSync(dataDir, { recursive: true });
  const destination = args["log-file"] ? pino.destination({ dest: args["log-file"], sync: true, mkdir: true }) : pino.destination({ dest: 1, sync: true });
  const logger = pino({ level: args["log-level"], base: { server: id } }, destination);
  const store = new Store(join(dataDir, "chat.db"), args.durability as Durability);
  logger.info({ dataDir, lastIndex: store.lastIndex, durability: args.durability }, "store opened");

  let clients: ClientService | undefined;
  const manager = new ConnectionManager(self, cluster, store, {
    onCommitted: (committed) => clients?.push(committed),
    onLostPrimacy: (reason) => {
      logger.warn({ reason }, "not serving clients any more; closing client connections");
      clients?.dropAll();
    },
  }, logger);
  clients = new ClientService(manager, cluster.clusterSecret, logger.child({ component: "clients" }));

  const shutdown = (signal: string) => {
    // better-sqlite3 is synchronous: no transaction can be half-done when this handler runs.
    logger.info({ signal }, "shutting down");
    clients?.close();
    manager.stop();
    store.close();
    destination.flushSync?.();
    process.exitCode = 0;
    setTimeout(() => process.exit(), 50).unref();
  };
  process.once("SIGTERM", () => shutdown("SIGTERM"));
  process.once("SIGINT", () => shutdown("SIGINT"));

  Promise.all([manager.start(), clients.listen(self.host, self.clientPort)])
    .then(() => logger.info({ clientPort: self.clientPort, peerPort: self.peerPort }, "listening"))
    .catch((error: Error) => {
      logger.fatal({ err: error }, "could not start");
      process.stderr.write(`error: could not start server ${id}: ${error.message}\n`);
      process.exit(1);
    });
}

main();
