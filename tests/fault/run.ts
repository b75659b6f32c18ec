// One fault-injection run: a real 3-server cluster, several clients writing and reading through the
// real ClientConnector, and a seeded schedule of crashes, freezes and restarts. Afterwards every
// server is brought back, the cluster is left to go quiet, and the checker compares the history with
// every server's SQLite file.
import { ClientConnector } from "../../connections/connector.js";
import { errorCodes, type ChatError } from "../../connections/errors.js";
import { seededRandom } from "../../utils.js";
import { TestCluster, sleep } from "../helpers/cluster.js";
import { check, readServerState, summarize, type Violation } from "./checker.js";
import { History } from "./history.js";
import { describeStep, makeSchedule, type FaultStep } from "./schedule.js";

export type FaultRunOptions = {
  seed: number;
  servers?: number;
  clients?: number;
  durationMs?: number;
  fullRestartChance?: number;
  log?: (line: string) => void;
  /** A planted bug (tests/fault/plant.ts) to load into every server. */
  plant?: "no-dedup" | "ack-before-backups";
};

export type FaultRunResult = { seed: number; schedule: string[]; history: string; violations: Violation[]; summary: string; acknowledged: number };

/** Connector retry budget in the fault runs, and the bound after which an operation counts as stuck. */
const retryBudgetMs = 15000;
const stuckAfterMs = retryBudgetMs + 5000;

export async function runFaultSchedule(options: FaultRunOptions): Promise<FaultRunResult> {
  const servers = options.servers ?? 3;
  const clientCount = options.clients ?? 3;
  const durationMs = options.durationMs ?? 6000;
  const log = options.log ?? (() => {});
  const schedule = makeSchedule(options.seed, { servers, durationMs, downMax: servers - 1, fullRestartChance: options.fullRestartChance ?? 0.08 });
  const random = seededRandom(options.seed ^ 0x5eed);
  const cluster = await TestCluster.create({
    servers,
    ...(options.plant ? { nodeArgs: ["--import", new URL("./plant.ts", import.meta.url).pathname], env: { ...process.env, CHATPLUS_PLANT: options.plant } as Record<string, string> } : {}),
  });
  const history = new History();
  const connectors: ClientConnector[] = [];
  const usernames = new Map<number, string>();
  try {
    await cluster.startAll();
    await cluster.waitForPrimary();
    const config = { ...cluster.config };
    for (let client = 0; client < clientCount; client += 1) {
      const connector = new ClientConnector(config, { retryBudgetMs, random: seededRandom(options.seed * 31 + client) });
      connectors.push(connector);
      const username = `f${options.seed}u${client}`;
      usernames.set(client, username);
      await connector.connect();
      const login = await connector.register(username, "password123");
      history.since.set(client, Number(login.seq ?? 0));
      connector.on("event", (event) => {
        if (event.event.kind !== "message") return;
        const message = event.event.message;
        const conversation = message.conversation.startsWith("#") ? message.conversation : `dm:${[message.from, message.to].sort().join(",")}`;
        history.observe(client, { id: message.id, conversation, body: message.body });
      });
    }
    let running = true;
    const workloads = connectors.map((connector, client) => clientLoop(connector, client, clientCount, history, random, () => running, usernames));
    await runSchedule(cluster, schedule, log);
    running = false;
    await Promise.all(workloads);
    // Bring everything back and let it go quiet.
    for (const id of cluster.config.machines.map((machine) => machine.id)) {
      if (!cluster.isRunning(id)) await cluster.start(id);
    }
    await cluster.waitForInSync(cluster.config.machines.map((machine) => machine.id), 30000);
    const reference = () => readServerState(1, `${cluster.dataDir(1)}/chat.db`);
    await waitForPushes(history, usernames, reference, 20000);
    const states = cluster.config.machines.map((machine) => readServerState(machine.id, `${cluster.dataDir(machine.id)}/chat.db`));
    const violations = check(history, states, { stuckAfterMs, usernames });
    const acknowledged = history.operations.filter((operation) => operation.body && operation.outcome === "ok").length;
    return { seed: options.seed, schedule: schedule.map(describeStep), history: history.summary(), violations, summary: summarize(violations), acknowledged };
  } finally {
    for (const connector of connectors) connector.close();
    await cluster.destroy({ keepData: process.env.CHATPLUS_KEEP_TEST_DATA !== undefined });
  }
}

async function clientLoop(
  connector: ClientConnector,
  client: number,
  clientCount: number,
  history: History,
  random: () => number,
  running: () => boolean,
  usernames: Map<number, string>,
): Promise<void> {
  let n = 0;
  while (running()) {
    n += 1;
    const roll = random();
    if (roll < 0.45) {
      const body = `c${client}-post-${n}`;
      const operation = history.invoke({ client, kind: "post", conversation: "#general", body });
      await connector.post("general", body).then(
        (message) => history.complete(operation, "ok", { messageId: message.id }),
        (error: ChatError) => history.complete(operation, outcomeOf(error), { code: error.code }),
      );
    } else if (roll < 0.9) {
      const to = usernames.get((client + 1) % clientCount)!;
      const body = `c${client}-dm-${n}`;
      const operation = history.invoke({ client, kind: "dm", conversation: `@${to}`, body });
      await connector.sendDm(to, body).then(
        (message) => history.complete(operation, "ok", { messageId: message.id }),
        (error: ChatError) => history.complete(operation, outcomeOf(error), { code: error.code }),
      );
    } else {
      const operation = history.invoke({ client, kind: "history", conversation: "#general" });
      await connector.history("#general", { limit: 100 }).then(
        (messages) => history.complete(operation, "ok", { read: messages.map((message) => ({ id: message.id, body: message.body })) }),
        (error: ChatError) => history.complete(operation, "fail", { code: error.code }),
      );
    }
  }
}

/** A write whose fate the connector could not learn is "unknown"; every other error means not applied. */
function outcomeOf(error: ChatError): "fail" | "unknown" {
  return error.code === errorCodes.OUTCOME_UNKNOWN ? "unknown" : "fail";
}

async function runSchedule(cluster: TestCluster, schedule: FaultStep[], log: (line: string) => void): Promise<void> {
  const start = Date.now();
  const resumes: Promise<void>[] = [];
  for (const step of schedule) {
    const wait = step.at - (Date.now() - start);
    if (wait > 0) await sleep(wait);
    log(describeStep(step));
    switch (step.kind) {
      case "kill":
        if (cluster.isRunning(step.server)) await cluster.kill(step.server);
        break;
      case "restart":
        if (!cluster.isRunning(step.server)) await cluster.start(step.server);
        break;
      case "pause":
        if (cluster.isRunning(step.server)) {
          await cluster.signal(step.server, "SIGSTOP");
          resumes.push(sleep(step.forMs).then(() => (cluster.isRunning(step.server) ? cluster.signal(step.server, "SIGCONT") : undefined)));
        }
        break;
      case "full-restart":
        await Promise.all(resumes.splice(0));
        await Promise.all(cluster.config.machines.map((machine) => (cluster.isRunning(machine.id) ? cluster.signal(machine.id, step.signal) : undefined)));
        for (const id of step.order) await cluster.start(id);
        break;
    }
  }
  await Promise.all(resumes);
}

/**
 * After the cluster is quiet, wait until every client has been shown every message of its
 * conversations (a connector may still be resuming after a late failover), or the bound passes;
 * whatever is still missing then is reported by the checker as push-lost.
 */
async function waitForPushes(history: History, usernames: Map<number, string>, reference: () => ReturnType<typeof readServerState>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const state = reference();
    const complete = [...usernames].every(([client, me]) => {
      const seen = new Set((history.seen.get(client) ?? []).map((item) => item.id));
      const since = history.since.get(client) ?? 0;
      for (const stored of state.messages.values()) {
        if (stored.id <= since) continue;
        const mine = stored.conversation === "#general" || stored.conversation.split(/[:,]/).includes(me);
        if (mine && !seen.has(stored.id)) return false;
      }
      return true;
    });
    if (complete) return;
    await sleep(250);
  }
}

export function formatResult(result: FaultRunResult): string {
  const lines = [`seed ${result.seed}: ${result.summary}; ${result.history}`];
  if (result.violations.length > 0) {
    lines.push("schedule:", ...result.schedule.map((step) => `  ${step}`));
    lines.push("violations (first 20):", ...result.violations.slice(0, 20).map((violation) => `  [${violation.class}] ${violation.detail}`));
    lines.push(`replay with: npm run fault -- --seed ${result.seed}`);
  }
  return lines.join("\n");
}
