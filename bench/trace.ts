// Where a lone write's time goes: runs the bench's c=1 level on a fresh 3-server cluster and records
// one second of kernel tracepoints with `perf record -a` meanwhile (needs perf and root). Prints each
// step's median, rebuilt from the syscalls of the four processes (bench/trace-parse.ts). Not part of
// `npm run bench`: it needs tools and rights a fresh machine may not have.
import { execa } from "execa";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { TestCluster } from "../tests/helpers/cluster.js";
import { startCluster, runLevel, makeTag, sleep, type BenchCluster } from "./phases.js";
import { chainSteps, parsePerfScript, summarizeChains } from "./trace-parse.js";
import { groupSizeDefault } from "./consts.js";

const usage = `Usage: npm run bench:trace -- [--record-seconds N]

Runs c=1 on a fresh cluster, records N s (default 1) of syscall tracepoints machine-wide with perf, and prints the median of each step of a write's chain. Needs perf and root.
`;

/** The syscalls a write's chain is rebuilt from (bench/trace-parse.ts). */
const tracepoints = ["read", "write", "writev", "pwrite64", "fsync", "fdatasync"].flatMap((call) => [`syscalls:sys_enter_${call}`, `syscalls:sys_exit_${call}`]);

function progress(text: string): void {
  process.stderr.write(`[trace] ${text}\n`);
}

async function checkPerf(): Promise<void> {
  try {
    await execa("perf", ["record", "-q", "-e", tracepoints[0], "-o", "/dev/null", "--", "true"]);
  } catch (error) {
    throw new Error(`perf cannot record syscall tracepoints here (needs perf and root): ${(error as Error).message.split("\n")[0]}`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { "record-seconds": { type: "string" }, help: { type: "boolean", short: "h" } } });
  if (values.help) {
    process.stdout.write(usage);
    return;
  }
  const recordSeconds = Number(values["record-seconds"] ?? "1");
  if (!(recordSeconds > 0 && recordSeconds <= 5)) throw new Error("--record-seconds must be in (0, 5]: a second is ~200 MB of perf data");
  await checkPerf();
  const dir = mkdtempSync(join(os.tmpdir(), "chatplus-trace-"));
  let bench: BenchCluster | undefined;
  let created: TestCluster | undefined;
  // Interrupted: stop the servers it started (by PID, through the harness) before exiting.
  const onSignal = () => void (created?.destroy() ?? Promise.resolve()).finally(() => process.exit(130));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    bench = await startCluster(progress, (cluster) => (created = cluster));
    const { cluster } = bench;
    const primaryId = await cluster.waitForPrimary();
    const backupIds = [1, 2, 3].filter((id) => id !== primaryId);
    const pids = { primary: cluster.pid(primaryId)!, backups: [cluster.pid(backupIds[0])!, cluster.pid(backupIds[1])!] as [number, number] };
    const warmupSeconds = 2;
    const level = runLevel(
      bench,
      { concurrency: 1, groupSize: groupSizeDefault, warmupSeconds, measureSeconds: recordSeconds + 2, tag: makeTag("t", "trace"), quietWaitSeconds: 0, quietThresholdPercent: 100 },
      progress,
    );
    // Registration takes a moment; start recording well inside the measuring window.
    await sleep((warmupSeconds + 2) * 1000);
    const data = join(dir, "perf.data");
    progress(`recording ${recordSeconds} s of tracepoints`);
    // --exclude-perf applies to the -e before it: perf's own writes of its data are left out.
    const recording = execa("perf", ["record", "-q", "-a", "-e", tracepoints.join(","), "--exclude-perf", "-o", data, "--", "sleep", String(recordSeconds)]);
    // The level ends on its own; wait for it either way, so the cluster is not stopped under it.
    const [recorded, result] = await Promise.allSettled([recording, level]);
    if (recorded.status === "rejected") throw recorded.reason;
    if (result.status === "rejected") throw result.reason;
    const script = await execa("perf", ["script", "-i", data, "-F", "comm,pid,tid,cpu,time,event,trace"], { maxBuffer: 2 * 1024 * 1024 * 1024 });
    const summary = summarizeChains(parsePerfScript(script.stdout, pids), pids);
    process.stdout.write(`c=1: ${Math.round(result.value.writesPerSecond)} writes/s, p50 ${result.value.latency.p50.toFixed(2)} ms in the bench's window; ${summary.writes} writes traced\n\n`);
    process.stdout.write("| step | p50 µs |\n|---|---|\n");
    for (const step of chainSteps) process.stdout.write(`| ${step} | ${Math.round(summary.medians[step])} |\n`);
  } finally {
    await bench?.locator.stop();
    await created?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  process.stderr.write(`trace failed: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
