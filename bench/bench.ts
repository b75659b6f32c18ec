// Chat+ benchmark: drives a real 3-server cluster (synchronous=FULL, loopback) through the real
// protocol and writes docs/performance.md. Progress goes to stderr; the summary of targets to stdout.
// Every process it starts is stopped by PID when it ends, fails or is interrupted.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { basename, dirname, extname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import type { TestCluster } from "../tests/helpers/cluster.js";
import {
  bulkClients,
  bulkDepth,
  catchUpEntriesDefault,
  profileAttemptsMax,
  profileCatchUpEntriesMax,
  failoverConcurrencyDefault,
  failoverTrialsDefault,
  groupSizeDefault,
  levelsDefault,
  measureSecondsDefault,
  millionMessagesDefault,
  quietThresholdPercentDefault,
  runTimeoutMs,
  warmupSecondsDefault,
} from "./consts.js";
import { runBareLevel } from "./bare.js";
import { measureLastConfig, measureLoopbackRtt, measureSqliteInserts } from "./limits.js";
import { makeTag, runCatchUp, runFailover, runLevel, runMillion, runProfile, startCluster, type BenchCluster, type LevelOptions, type LevelResult } from "./phases.js";
import { evaluateTargets, readAnalysis, renderChart, renderMarkdown, type RunResults } from "./report.js";

const phases = ["limits", "levels", "bare", "failover", "catchup", "million", "profile"] as const;
type Phase = (typeof phases)[number];

const usage = `Usage: npm run bench -- [options]

Benchmarks a 3-server Chat+ cluster on this machine (loopback only) and writes a report.

Options:
  --quick               smoke mode: c=1,16, 0.5 s warm-up, 1.5 s windows, tiny limits, no failover,
                        catch-up, 1M load or profile (a few seconds of load in total)
  --levels LIST         concurrency levels (default ${levelsDefault.join(",")})
  --seconds N           measuring window per level, seconds (default ${measureSecondsDefault})
  --warmup N            warm-up per level, seconds (default ${warmupSecondsDefault})
  --group-size N        clients per chat group / channel (default ${groupSizeDefault})
  --trials N            failover trials per kind (kill, freeze) (default ${failoverTrialsDefault})
  --catchup-entries N   entries written while a backup is down (default ${catchUpEntriesDefault})
  --million N           messages for the RSS measurement (default ${millionMessagesDefault})
  --profile-level N     concurrency of the profiled run (default 64)
  --skip LIST           phases to skip: ${phases.join(",")} (bare: the same levels on the bare
                        pipeline, bench/bare-server.ts, the floor of this design on this machine)
  --quiet-wait N        before each level, wait up to N s for other jobs on the machine to use
                        < ${quietThresholdPercentDefault}% CPU (default 30; 0 = do not wait)
  --out FILE            report path (default docs/performance.md); the chart goes next to it (.svg)
  --keep-profiles       keep the raw .cpuprofile files (their directory is printed)
  --save-json FILE      also save the raw results as JSON
  --render FILE         measure nothing: re-render the report from results saved with --save-json
                        (picks up a changed bench/analysis.md)
  -h, --help            show this help
`;

type Options = {
  quick: boolean;
  levels: number[];
  seconds: number;
  warmup: number;
  groupSize: number;
  trials: number;
  catchUpEntries: number;
  million: number;
  profileLevel: number;
  skip: Set<Phase>;
  quietWait: number;
  out: string;
  keepProfiles: boolean;
  saveJson: string | null;
  render: string | null;
};

function positiveNumber(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} must be a positive number, got ${JSON.stringify(text)}`);
  return value;
}

function parseOptions(argv: string[]): Options | "help" {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: "boolean", default: false },
      levels: { type: "string" },
      seconds: { type: "string" },
      warmup: { type: "string" },
      "group-size": { type: "string" },
      trials: { type: "string" },
      "catchup-entries": { type: "string" },
      million: { type: "string" },
      "profile-level": { type: "string" },
      skip: { type: "string" },
      "quiet-wait": { type: "string" },
      out: { type: "string", default: "docs/performance.md" },
      "keep-profiles": { type: "boolean", default: false },
      "save-json": { type: "string" },
      render: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) return "help";
  const quick = values.quick!;
  const levels = values.levels ? values.levels.split(",").map((text) => positiveNumber("levels", text.trim(), 1)) : quick ? [1, 16] : levelsDefault;
  if (levels.some((level) => !Number.isInteger(level) || level > 1024)) throw new Error("--levels must be integers from 1 to 1024");
  const skip = new Set<Phase>(quick ? ["failover", "catchup", "million", "profile"] : []);
  for (const name of (values.skip ?? "").split(",").map((text) => text.trim()).filter(Boolean)) {
    if (!phases.includes(name as Phase)) throw new Error(`--skip: unknown phase ${JSON.stringify(name)} (phases: ${phases.join(", ")})`);
    skip.add(name as Phase);
  }
  const quietWait = values["quiet-wait"] === "0" ? 0 : positiveNumber("quiet-wait", values["quiet-wait"], quick ? 0 : 30);
  return {
    quick,
    levels,
    seconds: positiveNumber("seconds", values.seconds, quick ? 1.5 : measureSecondsDefault),
    warmup: positiveNumber("warmup", values.warmup, quick ? 0.5 : warmupSecondsDefault),
    groupSize: Math.round(positiveNumber("group-size", values["group-size"], groupSizeDefault)),
    trials: Math.round(positiveNumber("trials", values.trials, failoverTrialsDefault)),
    catchUpEntries: Math.round(positiveNumber("catchup-entries", values["catchup-entries"], catchUpEntriesDefault)),
    million: Math.round(positiveNumber("million", values.million, millionMessagesDefault)),
    profileLevel: Math.round(positiveNumber("profile-level", values["profile-level"], 64)),
    skip,
    quietWait,
    out: resolve(values.out!),
    keepProfiles: values["keep-profiles"]!,
    saveJson: values["save-json"] ? resolve(values["save-json"]) : null,
    render: values.render ? resolve(values.render) : null,
  };
}

function progress(text: string): void {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${seconds}s] ${text}\n`);
}

const startedAt = performance.now();
const benchTempRoot = join(os.tmpdir(), "cp-bench-data");
const liveClusters = new Set<TestCluster>();

async function withCluster<T>(run: (bench: BenchCluster) => Promise<T>, nodeFlags: string[] = []): Promise<T> {
  let created: TestCluster | undefined;
  let failed = true;
  let bench: BenchCluster | undefined;
  try {
    bench = await startCluster(
      progress,
      (cluster) => {
        created = cluster;
        liveClusters.add(cluster);
      },
      nodeFlags,
    );
    const result = await run(bench);
    failed = false;
    return result;
  } finally {
    await bench?.locator.stop();
    if (created) {
      liveClusters.delete(created);
      // After a failure the data directory (SQLite files, server logs) is kept for inspection.
      if (failed) progress(`keeping the cluster's data and logs in ${created.dir}`);
      await created.destroy({ keepData: failed });
    }
  }
}

/** The product code measured: commit, plus any uncommitted changes to it. */
function productVersion(): string {
  const root = resolve(import.meta.dirname, "..");
  try {
    const commit = execFileSync("git", ["log", "-1", "--format=%h %s"], { cwd: root, encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "server.ts", "connections", "core", "store", "schema.ts"], { cwd: root, encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map((line) => line.slice(3));
    return `${commit.length > 90 ? `${commit.slice(0, 90)}…` : commit}${dirty.length ? ` + uncommitted changes to ${dirty.join(", ")}` : ""}`;
  } catch {
    return "unknown (not a git checkout)";
  }
}

function commandLine(argv: string[]): string {
  const quoted = argv.map((arg) => (/^[\w,./=:-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`));
  return `npm run bench${quoted.length ? ` -- ${quoted.join(" ")}` : ""}`;
}

async function run(options: Options, argv: string[]): Promise<RunResults> {
  const runTag = `b${Date.now().toString(36).slice(-6)}`;
  const cpus = os.cpus();
  const results: RunResults = {
    date: new Date().toISOString(),
    command: commandLine(argv),
    version: productVersion(),
    machine: {
      cpuModel: cpus[0]?.model ?? "unknown",
      cores: cpus.length,
      memoryGb: os.totalmem() / 1024 ** 3,
      node: process.version,
      platform: `${os.type()} ${os.arch()}`,
      kernel: os.release(),
      loadAverage: os.loadavg(),
    },
    settings: { levels: options.levels, warmupSeconds: options.warmup, measureSeconds: options.seconds, groupSize: options.groupSize, quick: options.quick, skipped: [...options.skip] },
    levels: [],
    failover: null,
    catchUp: null,
    million: null,
    limits: null,
    bare: null,
    profile: null,
    phaseErrors: {},
    durationSeconds: 0,
    analysis: readAnalysis(resolve(import.meta.dirname, "analysis.md")),
  };

  if (!options.skip.has("limits")) {
    const seconds = options.quick ? 0.3 : 2;
    progress(`machine limits: SQLite inserts (WAL, synchronous=FULL), ${seconds} s each`);
    const sqlite = [1, 100].map((rows) => measureSqliteInserts(rows, seconds));
    for (const s of sqlite) progress(`  ${s.rowsPerTransaction}/txn: ${s.rowsPerSecond.toFixed(0)} rows/s, commit p50 ${s.commitP50Ms.toFixed(2)} ms`);
    progress(`machine limits: loopback TCP round trip, ${seconds} s`);
    const rtt = await measureLoopbackRtt(seconds);
    progress(`  RTT p50 ${rtt.summary.p50.toFixed(3)} ms, p99 ${rtt.summary.p99.toFixed(3)} ms`);
    progress("machine limits: cost of Store.lastConfig() as the log grows past the newest config entry");
    const lastConfig = await measureLastConfig(options.quick ? [1000, 10000] : [1000, 10000, 50000, 100000, 200000]);
    for (const cost of lastConfig.costs) progress(`  ${cost.entriesSinceConfig} entries: ${(cost.msPerCall * 1e6).toFixed(1)} ns per call, ${cost.queryMsPerCall.toFixed(4)} ms per on-disk query (${lastConfig.plan})`);
    results.limits = { sqlite, rtt, lastConfig };
  }

  // One level's settings, for the cluster's levels and the bare pipeline's alike.
  const levelOptions = (concurrency: number, phaseTag: string): LevelOptions => ({
    concurrency,
    groupSize: options.groupSize,
    warmupSeconds: options.warmup,
    measureSeconds: options.seconds,
    tag: makeTag(runTag, phaseTag),
    quietWaitSeconds: options.quietWait,
    quietThresholdPercent: quietThresholdPercentDefault,
  });
  if (!options.skip.has("levels")) {
    // A fresh cluster per level: the servers' cost per write grows with the entries written since
    // the newest config entry (see the profile section), so levels sharing one cluster would each
    // inherit the log of the levels before them, and the order of the levels would decide the numbers.
    for (const concurrency of options.levels) {
      const level: LevelResult = await withCluster((bench) =>
        runLevel(bench, levelOptions(concurrency, `c${concurrency}`), progress),
      );
      results.levels.push(level);
    }
  }

  // A failed phase is reported (with its error) and the run goes on with the next one.
  const guarded = async (phase: Phase, body: () => Promise<void>) => {
    try {
      await body();
    } catch (error) {
      progress(`${phase} failed: ${(error as Error).stack ?? error}`);
      results.phaseErrors[phase] = (error as Error).message;
    }
  };
  if (!options.skip.has("bare")) {
    await guarded("bare", async () => {
      const bare = [];
      for (const concurrency of options.levels) {
        bare.push(await runBareLevel(levelOptions(concurrency, `n${concurrency}`), progress));
      }
      results.bare = bare;
    });
  }
  if (!options.skip.has("failover")) {
    await guarded("failover", () =>
      withCluster(async (bench) => {
        results.failover = await runFailover(bench, { trials: options.trials, concurrency: failoverConcurrencyDefault, groupSize: options.groupSize, tag: makeTag(runTag, "f") }, progress);
      }),
    );
  }
  if (!options.skip.has("catchup") || !options.skip.has("million")) {
    const heapDir = mkdtempSync(join(os.tmpdir(), "chatplus-bench-heap-"));
    await guarded(options.skip.has("catchup") ? "million" : "catchup", () =>
      withCluster(async (bench) => {
        if (!options.skip.has("catchup")) {
          results.catchUp = await runCatchUp(bench, { entries: options.catchUpEntries, clients: bulkClients, depth: bulkDepth, groupSize: options.groupSize, tag: makeTag(runTag, "k") }, progress);
        }
        if (!options.skip.has("million")) {
          results.million = await runMillion(bench, { messages: options.million, clients: bulkClients, depth: bulkDepth, groupSize: options.groupSize, tag: makeTag(runTag, "m"), idleSeconds: 5, heapDir }, progress);
        }
      }, [`--heapsnapshot-signal=SIGUSR2`, `--diagnostic-dir=${heapDir}`]),
    );
    rmSync(heapDir, { recursive: true, force: true });
  }

  if (!options.skip.has("profile")) {
    const profileDir = mkdtempSync(join(os.tmpdir(), "chatplus-bench-profiles-"));
    await guarded("profile", async () => {
      try {
      progress(`profile: c=${options.profileLevel} with --cpu-prof on every server`);
        // A window with a failover in it profiles the failover, not the write path: try once more.
        for (let attempt = 1; attempt <= profileAttemptsMax; attempt += 1) {
          results.profile = await runProfile(
            {
              concurrency: options.profileLevel,
              groupSize: options.groupSize,
              warmupSeconds: options.warmup,
              measureSeconds: options.seconds,
              tag: makeTag(runTag, `p${attempt}`),
              profileDir,
              catchUpEntries: options.skip.has("catchup") ? 0 : Math.min(options.catchUpEntries, profileCatchUpEntriesMax),
            },
            progress,
            (cluster) => liveClusters.add(cluster),
          );
          if (!results.profile.incident) break;
          if (attempt < profileAttemptsMax) progress("profile: the window had a freeze or failover; running it again on a fresh cluster");
        }
      } finally {
        if (options.keepProfiles) progress(`profile: raw profiles kept in ${profileDir}`);
        else rmSync(profileDir, { recursive: true, force: true });
      }
    });
  }
  results.durationSeconds = (performance.now() - startedAt) / 1000;
  return results;
}

function writeReport(results: RunResults, out: string): void {
  mkdirSync(dirname(out), { recursive: true });
  const chartPath = join(dirname(out), `${basename(out, extname(out))}.svg`);
  writeFileSync(chartPath, renderChart(results.levels, results.bare ?? []));
  writeFileSync(out, renderMarkdown(results, basename(chartPath)));
  progress(`wrote ${out} and ${chartPath}`);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  let options: Options | "help";
  try {
    options = parseOptions(argv);
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${usage}`);
    process.exitCode = 2;
    return;
  }
  if (options === "help") {
    process.stdout.write(usage);
    return;
  }
  // Our own temp root (same file system as os.tmpdir()): other jobs on a shared machine sweep
  // /tmp/chatplus-* directories, which TestCluster uses by default, while their tests run.
  mkdirSync(benchTempRoot, { recursive: true });
  process.env.TMPDIR = benchTempRoot;
  const cleanUp = async (reason: string) => {
    progress(`stopping (${reason}); cleaning up ${liveClusters.size} cluster(s)`);
    for (const cluster of liveClusters) progress(`keeping the cluster's data and logs in ${cluster.dir}`);
    await Promise.all([...liveClusters].map((cluster) => cluster.destroy({ keepData: true })));
  };
  const onSignal = (signal: NodeJS.Signals) => {
    void cleanUp(signal).finally(() => {
      process.exitCode = 130;
      process.exit();
    });
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const guard = setTimeout(() => onSignal("SIGTERM"), runTimeoutMs);
  guard.unref();
  try {
    let results: RunResults;
    if (options.render) {
      results = JSON.parse(readFileSync(options.render, "utf8")) as RunResults;
      results.analysis = readAnalysis(resolve(import.meta.dirname, "analysis.md"));
    } else {
      results = await run(options, argv);
      if (options.saveJson) writeFileSync(options.saveJson, JSON.stringify(results, null, 1));
    }
    writeReport(results, options.out);
    for (const check of evaluateTargets(results)) {
      const verdict = check.met === null ? (check.measured === "not measured" ? "not measured" : "inconclusive") : check.met ? "met" : "MISSED";
      process.stdout.write(`${verdict.padEnd(12)} ${check.target}: ${check.measured} (${check.ratio})\n`);
    }
  } catch (error) {
    process.stderr.write(`bench failed: ${(error as Error).stack ?? error}\n`);
    await cleanUp("failure");
    process.exitCode = 1;
  } finally {
    clearTimeout(guard);
  }
}

await main();
