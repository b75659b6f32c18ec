// The measured phases: load levels, failover trials, catch-up, a 1M-message load, and a profiled run.
// Each phase drives real server processes (tests/helpers/cluster.ts) through the real protocol.
import { readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { openReadOnly, repoRoot, TestCluster } from "../tests/helpers/cluster.js";
import { Link, pingOnce, PrimaryLocator, requestLine, type ServerStatus } from "./client.js";
import {
  bulkClients,
  bulkDepth,
  catchUpPollMs,
  catchUpTimeoutMs,
  catchUpWriteSecondsMax,
  millionWriteSecondsMax,
  clusterSyncTimeoutMs,
  failoverLeadInMs,
  failoverTailMs,
  failoverTrialTimeoutMs,
  latencySamplesMax,
  pipelineDepthMax,
} from "./consts.js";
import { summarizeHeap, waitForSnapshot, type HeapSummary } from "./heap.js";
import { LoadLoop, Workload, type Ack } from "./load.js";
import { memoryBreakdown, processRssMb, UsageSampler, type MemoryBreakdown, type UsageReport } from "./procstat.js";
import { monotonicMicros, summarizeProfile, type ProfileSummary } from "./profile.js";
import { summarize, type LatencySummary } from "./stats.js";

export type Progress = (text: string) => void;

export const serverIds = [1, 2, 3];

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A short tag, unique per run and phase, for user and channel names (lower case, digits). */
export function makeTag(runTag: string, phase: string): string {
  return `${runTag}${phase}`.slice(0, 20);
}

export function serverTargets(cluster: TestCluster): { label: string; pid: number }[] {
  return serverIds.filter((id) => cluster.pid(id) !== undefined).map((id) => ({ label: `server ${id}`, pid: cluster.pid(id)! }));
}

/** A running cluster and the locator every bench client uses to find (and follow) its primary. */
export type BenchCluster = { cluster: TestCluster; locator: PrimaryLocator };

/** Starts a fresh 3-server cluster (synchronous=FULL, the servers' default) and waits until all are in sync. */
export async function startCluster(progress: Progress, onCreated: (cluster: TestCluster) => void, nodeFlags: string[] = []): Promise<BenchCluster> {
  // Extra node flags (--cpu-prof is not allowed in NODE_OPTIONS): `sh -c 'exec "$0" FLAGS "$@"' node --import tsx server.ts ...`
  // replaces the shell with node, so the PID the harness holds is the server's.
  const wrap = nodeFlags.length > 0 ? () => ["sh", "-c", `exec "$0" ${nodeFlags.map((flag) => `'${flag}'`).join(" ")} "$@"`] : undefined;
  const cluster = await TestCluster.create({ servers: 3, wrap });
  onCreated(cluster);
  progress(`starting 3 servers (data in ${cluster.dir})`);
  await cluster.startAll();
  await cluster.waitForInSync(serverIds, clusterSyncTimeoutMs);
  const primary = await cluster.waitForPrimary(clusterSyncTimeoutMs);
  const locator = new PrimaryLocator(cluster.config);
  locator.start();
  progress(`cluster ready: primary is server ${primary}, pids ${serverIds.map((id) => cluster.pid(id)).join(", ")}`);
  return { cluster, locator };
}

/**
 * Waits until all three servers are in sync. If they are not within clusterSyncTimeoutMs, the
 * servers that are not caught up are restarted (what an operator would do) and the bench waits
 * again; the incident is returned so the report can show it.
 */
export async function resync(cluster: TestCluster, progress: Progress): Promise<string | null> {
  try {
    await cluster.waitForInSync(serverIds, clusterSyncTimeoutMs);
    return null;
  } catch (error) {
    const statuses = await Promise.all(serverIds.map(async (id) => ({ id, status: await cluster.status(id) })));
    const best = Math.max(...statuses.map(({ status }) => status?.commitIndex ?? 0));
    const stuck = statuses.filter(({ status }) => !status || status.role === "recovering" || status.lastIndex !== best).map(({ id }) => id);
    const incident = `not in sync after ${clusterSyncTimeoutMs / 1000} s: ${statuses.map(({ id, status }) => `server ${id} ${status ? `${status.role} epoch ${status.epoch} commit ${status.commitIndex} last ${status.lastIndex}` : "down"}`).join("; ")}; restarted server(s) ${stuck.join(", ")}`;
    progress(`WARNING: ${incident}`);
    for (const id of stuck) await cluster.restart(id);
    await cluster.waitForInSync(serverIds, clusterSyncTimeoutMs);
    void error;
    return incident;
  }
}

/** The server most clients of a workload are connected to now. */
function connectedPrimary(workload: Workload): number | null {
  const counts = new Map<number, number>();
  for (const client of workload.clients) if (client.serverId !== null) counts.set(client.serverId, (counts.get(client.serverId) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
}

// ---- background load ---------------------------------------------------------------------

/**
 * CPU used by processes that are not ours (other jobs on the machine) over `ms`, in % of one core.
 * Our processes are the bench itself and the given PIDs.
 */
export async function backgroundCpuPercent(pids: number[], ms: number): Promise<number> {
  const sampler = new UsageSampler(pids.map((pid) => ({ label: String(pid), pid })));
  sampler.start();
  await sleep(ms);
  const usage = sampler.stop();
  return otherCpuPercent(usage);
}

export function otherCpuPercent(usage: UsageReport): number {
  const ours = usage.processes.reduce((sum, process) => sum + (Number.isFinite(process.cpuPercent) ? process.cpuPercent : 0), 0) + usage.benchCpuPercent;
  return Math.max(0, usage.machineCpuPercent - ours);
}

/** Waits (at most maxSeconds) until other jobs use less than thresholdPercent CPU; returns what was seen last. */
export async function waitForQuiet(pids: number[], maxSeconds: number, thresholdPercent: number, progress: Progress): Promise<number> {
  const deadline = performance.now() + maxSeconds * 1000;
  let other = await backgroundCpuPercent(pids, 1000);
  while (other > thresholdPercent && performance.now() < deadline) {
    progress(`  waiting for other jobs on the machine to calm down (they use ${other.toFixed(0)}% CPU)`);
    other = await backgroundCpuPercent(pids, 2000);
  }
  return other;
}

// ---- load levels ------------------------------------------------------------------------------

/** One load level: clients, warm-up and window, and how long to wait for a quiet machine first. */
export type LevelOptions = { concurrency: number; groupSize: number; warmupSeconds: number; measureSeconds: number; tag: string; quietWaitSeconds: number; quietThresholdPercent: number };

export type LevelResult = {
  concurrency: number;
  groupSize: number;
  primary: number;
  /** Client failovers during the level: the primary was lost (should be 0; > 0 means the numbers include a failover). */
  failovers: number;
  primaryAfter: number | null;
  /** Acknowledged writes in each whole second of the window: shows whether throughput holds as the log grows. */
  perSecond: number[];
  /** "event loop was frozen" self-detections the servers logged during warm-up and window (each drops the primary's clients). */
  freezes: { server: number; gapMs: number }[];
  setupSeconds: number;
  measureSeconds: number;
  acked: number;
  writesPerSecond: number;
  errors: Record<string, number>;
  latency: LatencySummary;
  eventsPerSecond: number;
  usage: UsageReport;
  otherCpuPercent: number;
  otherCpuBeforePercent: number;
};

export async function runLevel(
  { cluster, locator }: BenchCluster,
  options: LevelOptions,
  progress: Progress,
): Promise<LevelResult> {
  const { concurrency, groupSize } = options;
  progress(`level c=${concurrency}: registering ${concurrency} users in groups of ${groupSize}`);
  const setupStart = performance.now();
  const primary = await waitForLocatorPrimary(locator, clusterSyncTimeoutMs);
  const workload = await Workload.create({ config: cluster.config, primaryId: primary, clients: concurrency, groupSize, tag: options.tag, locator, progress });
  const setupSeconds = (performance.now() - setupStart) / 1000;
  try {
    const pids = serverTargets(cluster).map((target) => target.pid);
    const otherBefore = options.quietWaitSeconds > 0 ? await waitForQuiet(pids, options.quietWaitSeconds, options.quietThresholdPercent, progress) : NaN;
    const latencies = new Float64Array(latencySamplesMax);
    let samples = 0;
    let acked = 0;
    const errors: Record<string, number> = {};
    let measuring = false;
    let windowStart = 0;
    let windowEnd = Infinity;
    const perSecond = new Array<number>(Math.floor(options.measureSeconds)).fill(0);
    const loop = new LoadLoop(workload, {
      depth: 1,
      onAck: (ack: Ack) => {
        if (!ack.outcome.ok) {
          errors[ack.outcome.code] = (errors[ack.outcome.code] ?? 0) + 1;
          return;
        }
        if (!measuring || ack.ackAt > windowEnd) return;
        acked += 1;
        const second = Math.floor((ack.ackAt - windowStart) / 1000);
        if (second >= 0 && second < perSecond.length) perSecond[second] += 1;
        if (ack.sentAt >= windowStart && samples < latencySamplesMax) latencies[samples++] = ack.ackAt - ack.sentAt;
      },
    });
    const loadStartWallMs = Date.now();
    loop.start();
    progress(`level c=${concurrency}: warm-up ${options.warmupSeconds} s`);
    await sleep(options.warmupSeconds * 1000);
    const sampler = new UsageSampler(serverTargets(cluster));
    const eventsBefore = workload.clients.reduce((sum, client) => sum + client.events, 0);
    const failoversBefore = workload.clients.reduce((sum, client) => sum + client.failovers, 0);
    sampler.start();
    windowStart = performance.now();
    measuring = true;
    const ticker = setInterval(() => progress(`level c=${concurrency}: ${acked} writes acknowledged so far`), 2000);
    await sleep(options.measureSeconds * 1000);
    windowEnd = performance.now();
    clearInterval(ticker);
    const usage = sampler.stop();
    const eventsAfter = workload.clients.reduce((sum, client) => sum + client.events, 0);
    const failovers = workload.clients.reduce((sum, client) => sum + client.failovers, 0) - failoversBefore;
    await loop.stop();
    const seconds = (windowEnd - windowStart) / 1000;
    const result: LevelResult = {
      concurrency,
      groupSize,
      primary,
      failovers,
      primaryAfter: connectedPrimary(workload),
      perSecond,
      freezes: freezesSince(cluster, loadStartWallMs),
      setupSeconds,
      measureSeconds: seconds,
      acked,
      writesPerSecond: acked / seconds,
      errors,
      latency: summarize(latencies.subarray(0, samples)),
      eventsPerSecond: (eventsAfter - eventsBefore) / seconds,
      usage,
      otherCpuPercent: otherCpuPercent(usage),
      otherCpuBeforePercent: otherBefore,
    };
    if (result.freezes.length > 0) progress(`level c=${concurrency}: WARNING: servers logged ${result.freezes.length} self-detected freezes: ${JSON.stringify(result.freezes)}`);
    if (failovers > 0) progress(`level c=${concurrency}: WARNING: ${failovers} client failovers during the window (primary ${primary} → ${result.primaryAfter}); see the servers' logs`);
    progress(
      `level c=${concurrency}: ${result.writesPerSecond.toFixed(0)} writes/s, p50 ${result.latency.p50.toFixed(2)} ms, p99 ${result.latency.p99.toFixed(2)} ms, ` +
        `p99.9 ${result.latency.p999.toFixed(2)} ms; CPU ${usage.processes.map((p) => `${p.label} ${p.cpuPercent.toFixed(0)}%`).join(", ")}, bench ${usage.benchCpuPercent.toFixed(0)}%, other jobs ${result.otherCpuPercent.toFixed(0)}%`,
    );
    return result;
  } finally {
    workload.close();
  }
}

// ---- failover ------------------------------------------------------------------------------------

export type FailoverTrial = {
  kind: "kill" | "freeze";
  oldPrimary: number;
  newPrimary: number | null;
  /** From the signal to the first write acknowledged by another server. */
  failoverMs: number;
  /** The longest any single write waited (first send to acknowledgement, across retries). */
  maxStallMs: number;
  acked: number;
  errors: Record<string, number>;
  resent: number;
  /** Set when the cluster did not get back in sync by itself after the trial (the stuck servers were restarted). */
  incidentAfter: string | null;
  /** From the servers' own logs (pino time, ms since the signal): when the successor started its takeover and when it began serving. */
  timeline: { candidateMs: number | null; servingMs: number | null; firstAckMs: number | null; events: string[] };
};

type RoleChange = { time: number; server: number; role?: string; serving?: boolean; reason?: string; msg: string; gapMs?: number };

/** Role changes and freeze notices every server logged at or after `sinceWallMs`, oldest first. */
function roleChangesSince(cluster: TestCluster, sinceWallMs: number): RoleChange[] {
  const changes: RoleChange[] = [];
  for (const id of serverIds) {
    for (const line of cluster.readLog(id).split("\n")) {
      if (!line.includes('"role change"') && !line.includes("frozen")) continue;
      try {
        const entry = JSON.parse(line) as RoleChange;
        if (entry.time >= sinceWallMs) changes.push(entry);
      } catch {
        // a line cut short by kill -9
      }
    }
  }
  return changes.sort((a, b) => a.time - b.time);
}

/** Where the failover time went, from the logs: signal → candidate → serving → first acknowledged write. */
function failoverTimeline(cluster: TestCluster, oldPrimary: number, signalWallMs: number, firstAckMs: number | null): FailoverTrial["timeline"] {
  const changes = roleChangesSince(cluster, signalWallMs - 1);
  const candidate = changes.find((change) => change.server !== oldPrimary && change.role === "candidate");
  const serving = changes.find((change) => change.server !== oldPrimary && change.role === "primary" && change.serving === true);
  const events = changes
    .filter((change) => change.time <= (serving?.time ?? Infinity) + 50)
    .map((change) => `+${change.time - signalWallMs} ms server ${change.server}: ${change.role ? `${change.role}${change.serving ? " (serving)" : ""}` : change.msg}${change.reason ? ` — ${change.reason}` : ""}`);
  return {
    candidateMs: candidate ? candidate.time - signalWallMs : null,
    servingMs: serving ? serving.time - signalWallMs : null,
    firstAckMs,
    events,
  };
}

async function waitForLocatorPrimary(locator: PrimaryLocator, timeoutMs: number): Promise<number> {
  const found = await locator.waitForPrimary(0, timeoutMs);
  if (!found) throw new Error(`no primary visible to the locator within ${timeoutMs} ms`);
  return found.id;
}

export async function runFailoverTrial(
  cluster: TestCluster,
  locator: PrimaryLocator,
  workload: Workload,
  kind: "kill" | "freeze",
  progress: Progress,
): Promise<FailoverTrial> {
  const oldPrimary = await waitForLocatorPrimary(locator, clusterSyncTimeoutMs);
  const acks: Ack[] = [];
  const errors: Record<string, number> = {};
  let firstNewAck: Ack | undefined;
  let signalAt = Infinity;
  const resentBefore = workload.clients.reduce((sum, client) => sum + client.resent, 0);
  const loop = new LoadLoop(workload, {
    depth: 1,
    suspectFrozen: true,
    onAck: (ack) => {
      if (!ack.outcome.ok) {
        errors[ack.outcome.code] = (errors[ack.outcome.code] ?? 0) + 1;
        return;
      }
      acks.push(ack);
      if (!firstNewAck && ack.ackAt > signalAt && ack.outcome.serverId !== oldPrimary) firstNewAck = ack;
    },
  });
  loop.start();
  await sleep(failoverLeadInMs);
  // Fast pings only from the signal on, so the lead-in load is not disturbed by them.
  locator.setActive(true);
  const signalWallMs = Date.now();
  signalAt = performance.now();
  if (kind === "kill") await cluster.kill(oldPrimary);
  else await cluster.signal(oldPrimary, "SIGSTOP");
  const deadline = signalAt + failoverTrialTimeoutMs;
  while (!firstNewAck && performance.now() < deadline) await sleep(2);
  if (firstNewAck) await sleep(failoverTailMs);
  await loop.stop();
  locator.setActive(false);
  const resent = workload.clients.reduce((sum, client) => sum + client.resent, 0) - resentBefore;
  // Put the old primary back and let it rejoin before the next trial.
  if (kind === "kill") await cluster.start(oldPrimary);
  else await cluster.signal(oldPrimary, "SIGCONT");
  let maxStallMs = 0;
  for (const ack of acks) if (ack.ackAt > signalAt) maxStallMs = Math.max(maxStallMs, ack.ackAt - ack.sentAt);
  const trial: FailoverTrial = {
    kind,
    oldPrimary,
    newPrimary: firstNewAck ? firstNewAck.outcome.serverId : null,
    failoverMs: firstNewAck ? firstNewAck.ackAt - signalAt : NaN,
    maxStallMs,
    acked: acks.length,
    errors,
    resent,
    incidentAfter: null,
    timeline: failoverTimeline(cluster, oldPrimary, signalWallMs, firstNewAck ? firstNewAck.ackAt - signalAt : null),
  };
  progress(
    `failover (${kind}) of server ${oldPrimary}: ` +
      (firstNewAck ? `server ${trial.newPrimary} acknowledged a write after ${trial.failoverMs.toFixed(0)} ms; longest stall ${maxStallMs.toFixed(0)} ms` : "NO new primary acknowledged a write") +
      `; ${resent} writes re-sent${Object.keys(errors).length ? `; errors ${JSON.stringify(errors)}` : ""}`,
  );
  for (const event of trial.timeline.events) progress(`    ${event}`);
  trial.incidentAfter = await resync(cluster, progress);
  return trial;
}

export async function runFailover(
  { cluster, locator }: BenchCluster,
  options: { trials: number; concurrency: number; groupSize: number; tag: string },
  progress: Progress,
): Promise<FailoverTrial[]> {
  const trials: FailoverTrial[] = [];
  let workload: Workload | undefined;
  try {
    const primary = await waitForLocatorPrimary(locator, clusterSyncTimeoutMs);
    progress(`failover: registering ${options.concurrency} failover-capable clients`);
    workload = await Workload.create({ config: cluster.config, primaryId: primary, clients: options.concurrency, groupSize: options.groupSize, tag: options.tag, locator, progress });
    for (const kind of ["kill", "freeze"] as const) {
      for (let trial = 0; trial < options.trials; trial += 1) {
        progress(`failover: ${kind} trial ${trial + 1}/${options.trials}`);
        trials.push(await runFailoverTrial(cluster, locator, workload, kind, progress));
      }
    }
  } finally {
    workload?.close();
    locator.setActive(false);
  }
  return trials;
}

// ---- bulk writes (pipelined), catch-up and the 1M-message load ------------------------------------

export type BulkTick = { seconds: number; done: number; writesPerSecond: number; rssMb: Record<number, number> };
export type BulkResult = {
  requested: number;
  entries: number;
  seconds: number;
  writesPerSecond: number;
  errors: Record<string, number>;
  /** True if the time limit stopped it before `requested` writes. */
  timedOut: boolean;
  /** Progress every bulkTickMs: how the write rate changes as the log grows. */
  ticks: BulkTick[];
};

const bulkTickMs = 5000;

/** Writes `total` messages as fast as possible (`clients` connections, `depth` writes in flight each), for at most `secondsMax`. */
export async function bulkWrite(
  { cluster, locator }: BenchCluster,
  options: { total: number; secondsMax: number; clients: number; depth: number; groupSize: number; tag: string; label: string },
  progress: Progress,
): Promise<BulkResult> {
  const primary = await waitForLocatorPrimary(locator, clusterSyncTimeoutMs);
  const workload = await Workload.create({ config: cluster.config, primaryId: primary, clients: options.clients, groupSize: options.groupSize, tag: options.tag, locator, progress });
  try {
    let done = 0;
    const errors: Record<string, number> = {};
    const loop = new LoadLoop(workload, {
      depth: Math.min(options.depth, pipelineDepthMax),
      total: options.total,
      onAck: (ack) => {
        if (ack.outcome.ok) done += 1;
        else errors[ack.outcome.code] = (errors[ack.outcome.code] ?? 0) + 1;
      },
    });
    const started = performance.now();
    const ticks: BulkTick[] = [];
    let lastDone = 0;
    let lastAt = started;
    const ticker = setInterval(() => {
      const now = performance.now();
      const tick: BulkTick = {
        seconds: (now - started) / 1000,
        done,
        writesPerSecond: ((done - lastDone) / (now - lastAt)) * 1000,
        rssMb: Object.fromEntries(serverIds.map((id) => [id, processRssMb(cluster.pid(id) ?? -1) ?? NaN])),
      };
      ticks.push(tick);
      lastDone = done;
      lastAt = now;
      progress(
        `${options.label}: ${done}/${options.total} written, ${tick.writesPerSecond.toFixed(0)}/s over the last ${bulkTickMs / 1000} s; RSS ${serverIds.map((id) => `s${id} ${fixed0(tick.rssMb[id])} MB`).join(", ")}`,
      );
    }, bulkTickMs);
    loop.start();
    const deadline = sleep(options.secondsMax * 1000).then(() => "timeout" as const);
    const outcome = await Promise.race([loop.finished().then(() => "done" as const), deadline]);
    if (outcome === "timeout") {
      progress(`${options.label}: time limit of ${options.secondsMax} s reached after ${done} writes; stopping`);
      await loop.stop();
    }
    clearInterval(ticker);
    const seconds = (performance.now() - started) / 1000;
    return { requested: options.total, entries: done, seconds, writesPerSecond: done / seconds, errors, timedOut: outcome === "timeout", ticks };
  } finally {
    workload.close();
  }
}

function fixed0(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? "?" : value.toFixed(0);
}

export type CatchUpResult = {
  downServer: number;
  /** Primary when the backup was killed. */
  primaryBefore: number;
  /** The server whose config entry added the restarted one back (the primary by then). */
  primary: number;
  /** The primary's last index minus the restarted server's last index when it opened its store. */
  entriesBehind: number;
  write: BulkResult;
  /** "event loop was frozen" detections the servers logged while the backlog was written. */
  freezesWhileWriting: number;
  /** From spawning the process to the primary adding it to the in-sync set. */
  spawnToInSyncMs: number;
  /** From the process accepting client connections to the primary adding it to the in-sync set. */
  listeningToInSyncMs: number;
  spawnToListeningMs: number;
  /**
   * From joining the in-sync set to having applied every entry it logged during the catch-up (its
   * "applied the logged entries" line); null if it did not log that line. Until then, a takeover by
   * this server waits for the rest to be applied.
   */
  inSyncToAppliedMs: number | null;
  /** How the in-sync moment was observed. */
  detectedBy: string;
  /** `members` of the primary's ping right after, as confirmation. */
  confirmedMembers: number[] | null;
};

type LogLine = { time: number; msg: string; members?: number[]; role?: string; reason?: string };

/** Log lines of one server at or after sinceWallMs whose msg matches. */
function logLines(cluster: TestCluster, id: number, sinceWallMs: number, msg: string): LogLine[] {
  const lines: LogLine[] = [];
  for (const text of cluster.readLog(id).split("\n")) {
    if (!text.includes(msg)) continue;
    try {
      const line = JSON.parse(text) as LogLine;
      if (line.time >= sinceWallMs && line.msg === msg) lines.push(line);
    } catch {
      // a partial line
    }
  }
  return lines;
}

/**
 * Waits until a primary writes a config entry that lists `id` (its "proposing config" log line):
 * that entry is what a ping's `members` reports. The bench watches the servers' log files rather
 * than pinging every few ms, because each ping makes the server read its newest config from
 * SQLite, which is not free while the log grows (see the profile section), and would slow down
 * the very catch-up it measures. Every server's log is watched: the primary may change meanwhile.
 */
async function waitForConfigWith(cluster: TestCluster, id: number, sinceWallMs: number, timeoutMs: number): Promise<(LogLine & { server: number }) | undefined> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    for (const server of serverIds) {
      if (server === id) continue;
      const found = logLines(cluster, server, sinceWallMs, "proposing config").find((line) => line.members?.includes(id));
      if (found) return { ...found, server };
    }
    await sleep(catchUpPollMs);
  }
  return undefined;
}

async function waitForLogLine(cluster: TestCluster, id: number, sinceWallMs: number, msg: string, timeoutMs: number): Promise<LogLine | undefined> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const found = logLines(cluster, id, sinceWallMs, msg)[0];
    if (found) return found;
    await sleep(catchUpPollMs);
  }
  return undefined;
}

/** Self-detected freezes ("event loop was frozen") each server logged since sinceWallMs. */
export function freezesSince(cluster: TestCluster, sinceWallMs: number): { server: number; gapMs: number }[] {
  const found: { server: number; gapMs: number }[] = [];
  for (const server of serverIds) {
    for (const text of cluster.readLog(server).split("\n")) {
      if (!text.includes("event loop was frozen")) continue;
      try {
        const line = JSON.parse(text) as { time: number; gapMs: number };
        if (line.time >= sinceWallMs) found.push({ server, gapMs: line.gapMs });
      } catch {
        // a partial line
      }
    }
  }
  return found;
}

export async function runCatchUp(
  bench: BenchCluster,
  options: { entries: number; clients: number; depth: number; groupSize: number; tag: string },
  progress: Progress,
): Promise<CatchUpResult> {
  const { cluster } = bench;
  await cluster.waitForInSync(serverIds, clusterSyncTimeoutMs);
  const primary = await cluster.waitForPrimary(clusterSyncTimeoutMs);
  const downServer = [...serverIds].reverse().find((id) => id !== primary)!;
  progress(`catch-up: killing backup server ${downServer}, then writing ${options.entries} entries`);
  await cluster.kill(downServer);
  const removed = await pollStatus(cluster, primary, (status) => !status.members.includes(downServer), 10000);
  if (!removed) throw new Error(`primary ${primary} did not drop server ${downServer} from the in-sync set`);
  const writeStartWallMs = Date.now();
  const write = await bulkWrite(bench, { ...options, total: options.entries, secondsMax: catchUpWriteSecondsMax, label: "catch-up backlog" }, progress);
  const writePrimary = await cluster.waitForPrimary(clusterSyncTimeoutMs);
  const afterWrite = await pingOnce(cluster.machine(writePrimary), 10000);
  const freezes = freezesSince(cluster, writeStartWallMs);
  progress(`catch-up: wrote ${write.entries} in ${write.seconds.toFixed(1)} s (${write.writesPerSecond.toFixed(0)}/s); primary now server ${writePrimary} at index ${afterWrite?.lastIndex}; ${freezes.length} self-detected freezes meanwhile; restarting server ${downServer}`);
  const spawnWallMs = Date.now();
  const spawnAt = performance.now();
  await cluster.start(downServer);
  const listeningAt = performance.now();
  const opened = logLines(cluster, downServer, spawnWallMs, "store opened")[0] as (LogLine & { lastIndex?: number }) | undefined;
  const entriesBehind = (afterWrite?.lastIndex ?? NaN) - (opened?.lastIndex ?? NaN);
  const config = await waitForConfigWith(cluster, downServer, spawnWallMs, catchUpTimeoutMs);
  if (!config) throw new Error(`server ${downServer} did not rejoin the in-sync set within ${catchUpTimeoutMs} ms`);
  const inSyncAt = spawnAt + (config.time - spawnWallMs);
  const confirmed = await pingOnce(cluster.machine(config.server), 10000);
  const applied = await waitForLogLine(cluster, downServer, spawnWallMs, "applied the logged entries", catchUpTimeoutMs);
  const result: CatchUpResult = {
    downServer,
    primaryBefore: primary,
    primary: config.server,
    entriesBehind,
    write,
    freezesWhileWriting: freezes.length,
    spawnToInSyncMs: inSyncAt - spawnAt,
    listeningToInSyncMs: inSyncAt - listeningAt,
    spawnToListeningMs: listeningAt - spawnAt,
    inSyncToAppliedMs: applied ? applied.time - config.time : null,
    detectedBy: `the "proposing config" log line of primary ${config.server} listing server ${downServer} (pino timestamp)`,
    confirmedMembers: confirmed?.members ?? null,
  };
  progress(
    `catch-up: server ${downServer} back in the in-sync set ${result.listeningToInSyncMs.toFixed(0)} ms after it was listening ` +
      `(${result.spawnToInSyncMs.toFixed(0)} ms after spawn); primary's ping now lists members ${JSON.stringify(result.confirmedMembers)}; ` +
      `it applied the last logged entry ${result.inSyncToAppliedMs ?? "?"} ms after joining`,
  );
  return result;
}

/** Pings one server over one connection, every catchUpPollMs, until `done(status)` or the timeout. */
async function pollStatus(cluster: TestCluster, id: number, done: (status: ServerStatus) => boolean, timeoutMs: number): Promise<ServerStatus | undefined> {
  const deadline = performance.now() + timeoutMs;
  let link: Link | undefined;
  let nextId = 1;
  try {
    while (performance.now() < deadline) {
      if (!link || link.closed) {
        try {
          link = await Link.open(cluster.machine(id));
        } catch {
          await sleep(catchUpPollMs);
          continue;
        }
      }
      const requestId = nextId++;
      const outcome = await link.request(requestId, requestLine(requestId, "ping", {}), 2000);
      if (outcome.ok && done(outcome.data as ServerStatus)) return outcome.data as ServerStatus;
      await sleep(catchUpPollMs);
    }
    return undefined;
  } finally {
    link?.close();
  }
}

export type MillionResult = {
  write: BulkResult;
  /** Messages in the primary's messages table afterwards (read from its SQLite file). */
  storedMessages: number;
  rssAfterMb: Record<number, number>;
  rssAfterIdleMb: Record<number, number>;
  rssMaxMb: Record<number, number>;
  idleSeconds: number;
  freezes: { server: number; gapMs: number }[];
  /** RSS by mapping kind (smaps) for each server: fresh (before the load) and at the end. */
  memoryBefore: Record<number, MemoryBreakdown | undefined>;
  memoryAfter: Record<number, MemoryBreakdown | undefined>;
  /** What the primary's JavaScript heap held at the end (heap snapshot), if taken. */
  heap: { server: number; rssMb: number; summary: HeapSummary } | null;
};

export async function runMillion(
  bench: BenchCluster,
  options: { messages: number; clients: number; depth: number; groupSize: number; tag: string; idleSeconds: number; heapDir?: string },
  progress: Progress,
): Promise<MillionResult> {
  const { cluster } = bench;
  await cluster.waitForInSync(serverIds, clusterSyncTimeoutMs);
  const primary = await cluster.waitForPrimary(clusterSyncTimeoutMs);
  const rssMaxMb: Record<number, number> = {};
  const sampleRss = () => {
    for (const id of serverIds) {
      const rss = processRssMb(cluster.pid(id) ?? -1);
      if (rss !== undefined) rssMaxMb[id] = Math.max(rssMaxMb[id] ?? 0, rss);
    }
  };
  const memoryBefore = Object.fromEntries(serverIds.map((id) => [id, memoryBreakdown(cluster.pid(id) ?? -1)]));
  const rssTimer = setInterval(sampleRss, 500);
  const startWallMs = Date.now();
  let write: BulkResult;
  try {
    write = await bulkWrite(bench, { ...options, total: options.messages, secondsMax: millionWriteSecondsMax, label: "1M load" }, progress);
  } finally {
    clearInterval(rssTimer);
  }
  sampleRss();
  const rss = () => Object.fromEntries(serverIds.map((id) => [id, processRssMb(cluster.pid(id) ?? -1) ?? NaN]));
  const rssAfterMb = rss();
  await sleep(options.idleSeconds * 1000);
  const rssAfterIdleMb = rss();
  const memoryAfter = Object.fromEntries(serverIds.map((id) => [id, memoryBreakdown(cluster.pid(id) ?? -1)]));
  const db = openReadOnly(join(cluster.dataDir(primary), "chat.db"));
  let storedMessages = 0;
  try {
    storedMessages = (db.prepare("SELECT count(*) AS n FROM messages").get() as { n: number }).n;
  } finally {
    db.close();
  }
  progress(`1M load: ${write.entries} messages in ${write.seconds.toFixed(0)} s; ${storedMessages} stored; RSS after ${JSON.stringify(rssAfterMb)}, after ${options.idleSeconds} s idle ${JSON.stringify(rssAfterIdleMb)}`);
  const freezes = freezesSince(cluster, startWallMs);
  let heap: MillionResult["heap"] = null;
  const pid = cluster.pid(primary);
  if (options.heapDir && pid) {
    // The server was started with --heapsnapshot-signal=SIGUSR2. Writing the snapshot blocks it for
    // a while (it will then consider itself frozen), so this comes after every other measurement.
    progress(`1M load: taking a heap snapshot of the primary (server ${primary})`);
    const known = new Set(readdirSync(options.heapDir));
    const rssMb = processRssMb(pid) ?? NaN;
    process.kill(pid, "SIGUSR2");
    const path = await waitForSnapshot(options.heapDir, known);
    if (path) {
      heap = { server: primary, rssMb, summary: summarizeHeap(path) };
      rmSync(path, { force: true });
      progress(`1M load: JS heap of server ${primary}: ${heap.summary.totalMb.toFixed(0)} MB of ${rssMb.toFixed(0)} MB RSS`);
    } else progress("1M load: no heap snapshot was written");
  }
  return { write, storedMessages, rssAfterMb, rssAfterIdleMb, rssMaxMb, idleSeconds: options.idleSeconds, freezes, heap, memoryBefore, memoryAfter };
}

// ---- profiled run --------------------------------------------------------------------------------

export type ProfileResult = {
  concurrency: number;
  seconds: number;
  writesPerSecond: number;
  latency: LatencySummary;
  usage: UsageReport;
  primary: number;
  /** Set when primacy changed or a server detected a freeze during the profiled window. */
  incident: string | null;
  summaries: { id: number; role: string; summary: ProfileSummary }[];
  /** A profiled catch-up after the load (spawn of the restarted server to the config that adds it). */
  catchUp: { server: number; entries: number; ms: number } | null;
  catchUpSummaries: { id: number; role: string; summary: ProfileSummary }[];
};

/** A separate cluster whose servers run with --cpu-prof; only the measuring window is summarized. */
export async function runProfile(
  options: { concurrency: number; groupSize: number; warmupSeconds: number; measureSeconds: number; tag: string; profileDir: string; catchUpEntries: number },
  progress: Progress,
  onCreated: (cluster: TestCluster) => void,
): Promise<ProfileResult> {
  const bench = await startCluster(progress, onCreated, ["--cpu-prof", `--cpu-prof-dir=${options.profileDir}`]);
  const { cluster, locator } = bench;
  try {
    const primary = await waitForLocatorPrimary(locator, clusterSyncTimeoutMs);
    const workload = await Workload.create({ config: cluster.config, primaryId: primary, clients: options.concurrency, groupSize: options.groupSize, tag: options.tag, locator, progress });
    const latencies: number[] = [];
    let acked = 0;
    let measuring = false;
    const loop = new LoadLoop(workload, {
      depth: 1,
      onAck: (ack) => {
        if (measuring && ack.outcome.ok) {
          acked += 1;
          latencies.push(ack.ackAt - ack.sentAt);
        }
      },
    });
    loop.start();
    await sleep(options.warmupSeconds * 1000);
    const sampler = new UsageSampler(serverTargets(cluster));
    sampler.start();
    const loadWindow = { from: monotonicMicros(), to: 0 };
    const windowStartWallMs = Date.now();
    const started = performance.now();
    measuring = true;
    await sleep(options.measureSeconds * 1000);
    measuring = false;
    loadWindow.to = monotonicMicros();
    const seconds = (performance.now() - started) / 1000;
    const usage = sampler.stop();
    await loop.stop();
    workload.close();
    const primaryAtEnd = await cluster.waitForPrimary(clusterSyncTimeoutMs);
    const windowFreezes = freezesSince(cluster, windowStartWallMs);
    const incident =
      primaryAtEnd !== primary || windowFreezes.length > 0
        ? `during the profiled window the servers logged ${windowFreezes.length} self-detected freezes (${windowFreezes.map((f) => `s${f.server} ${f.gapMs} ms`).join(", ")}); primary ${primary} at the start, ${primaryAtEnd} at the end`
        : null;
    if (incident) progress(`profile: WARNING: ${incident}`);
    // A profiled catch-up on the same cluster (the measured catch-up runs without the profiler).
    const loadPids = new Map(serverIds.map((id) => [id, cluster.pid(id)!]));
    let catchUp: { server: number; primary: number; entries: number; ms: number; window: { from: number; to: number } } | null = null;
    if (options.catchUpEntries > 0) {
      const down = [...serverIds].reverse().find((id) => id !== primaryAtEnd)!;
      progress(`profile: catch-up of ${options.catchUpEntries} entries by server ${down}`);
      await cluster.kill(down);
      const removed = await pollStatus(cluster, primaryAtEnd, (status) => !status.members.includes(down), 10000);
      if (!removed) throw new Error(`primary ${primaryAtEnd} did not drop server ${down}`);
      await bulkWrite(bench, { total: options.catchUpEntries, secondsMax: catchUpWriteSecondsMax, clients: bulkClients, depth: bulkDepth, groupSize: options.groupSize, tag: `${options.tag}k`, label: "profile catch-up backlog" }, progress);
      const spawnWallMs = Date.now();
      await cluster.start(down);
      // From accepting client connections, as the catch-up target measures: not node's and tsx's startup.
      const from = monotonicMicros();
      const listeningWallMs = Date.now();
      const config = await waitForConfigWith(cluster, down, spawnWallMs, catchUpTimeoutMs);
      if (config) {
        const to = from + (config.time - listeningWallMs) * 1000;
        catchUp = { server: down, primary: config.server, entries: options.catchUpEntries, ms: (to - from) / 1000, window: { from, to } };
      } else progress(`profile: server ${down} did not catch up within ${catchUpTimeoutMs} ms`);
    }
    const finalPids = new Map(serverIds.map((id) => [id, cluster.pid(id)!]));
    await locator.stop();
    // SIGTERM: the servers exit through process.exit, which writes the profile.
    for (const id of serverIds) if (cluster.isRunning(id)) await cluster.signal(id, "SIGTERM");
    const files = readdirSync(options.profileDir);
    const profileOf = (pid: number) => files.find((name) => name.includes(`.${pid}.0.`) && name.endsWith(".cpuprofile"));
    const summaries: ProfileResult["summaries"] = [];
    for (const id of serverIds) {
      const file = profileOf(loadPids.get(id)!);
      const role = id === primary && id === primaryAtEnd ? "primary" : id === primary ? "primary at the start, lost primacy during the window" : id === primaryAtEnd ? "backup, became primary during the window" : "backup";
      if (file) summaries.push({ id, role, summary: summarizeProfile(join(options.profileDir, file), loadWindow.from, loadWindow.to, repoRoot) });
      else progress(`profile: no load profile from server ${id} (pid ${loadPids.get(id)}; killed for the catch-up, or exited abnormally)`);
    }
    const catchUpSummaries: ProfileResult["catchUpSummaries"] = [];
    if (catchUp) {
      for (const id of [catchUp.primary, catchUp.server]) {
        const file = profileOf(finalPids.get(id)!);
        if (file) catchUpSummaries.push({ id, role: id === catchUp.primary ? "primary (sending)" : "restarted server (catching up)", summary: summarizeProfile(join(options.profileDir, file), catchUp.window.from, catchUp.window.to, repoRoot) });
      }
    }
    progress(`profile: ${(acked / seconds).toFixed(0)} writes/s under the profiler${catchUp ? `; profiled catch-up of ${catchUp.entries} entries took ${catchUp.ms.toFixed(0)} ms` : ""}`);
    return {
      concurrency: options.concurrency,
      seconds,
      writesPerSecond: acked / seconds,
      latency: summarize(latencies),
      usage,
      primary,
      incident,
      summaries,
      catchUp: catchUp ? { server: catchUp.server, entries: catchUp.entries, ms: catchUp.ms } : null,
      catchUpSummaries,
    };
  } finally {
    await locator.stop();
    await cluster.destroy();
  }
}
