// Runs the bare pipeline (bench/bare-server.ts: one primary, two backups, the I/O of a replicated
// write and nothing else) under the same load generator, requests and push pattern as the real
// cluster's levels. Its writes/s bound what any design of this shape can reach on this machine.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ClusterConfig } from "../connections/consts.js";
import { spawnWithPort, stopChildren, type PortChild } from "./child.js";
import { latencySamplesMax } from "./consts.js";
import { LoadLoop, Workload, type Ack } from "./load.js";
import { otherCpuPercent, waitForQuiet, type LevelOptions, type Progress } from "./phases.js";
import { UsageSampler, type UsageReport } from "./procstat.js";
import { summarize, type LatencySummary } from "./stats.js";

export type BareLevel = {
  concurrency: number;
  writesPerSecond: number;
  latency: LatencySummary;
  eventsPerSecond: number;
  /** Writes answered with an error or not at all (a bare pipeline has no failover: should be 0). */
  errors: number;
  usage: UsageReport;
  otherCpuPercent: number;
  measureSeconds: number;
};

/** One level on a fresh bare pipeline: warm-up, then a measuring window, like runLevel. */
export async function runBareLevel(
  options: LevelOptions,
  progress: Progress,
): Promise<BareLevel> {
  const dir = mkdtempSync(join(tmpdir(), "chatplus-bench-bare-"));
  const children: PortChild[] = [];
  let workload: Workload | undefined;
  try {
    for (const name of ["b1", "b2"]) children.push(await spawnWithPort("bare-server.ts", ["backup", join(dir, `${name}.db`)]));
    children.push(await spawnWithPort("bare-server.ts", ["primary", join(dir, "p.db"), String(children[0].port), String(children[1].port)]));
    const config: ClusterConfig = {
      machines: [{ id: 1, host: "127.0.0.1", clientPort: children[2].port, peerPort: children[2].port }],
      clusterSecret: "bare-pipeline-no-secret",
    };
    workload = await Workload.create({ config, primaryId: 1, clients: options.concurrency, groupSize: options.groupSize, tag: options.tag });
    const pids = children.map((child) => child.process.pid!);
    if (options.quietWaitSeconds > 0) await waitForQuiet(pids, options.quietWaitSeconds, options.quietThresholdPercent, progress);
    const latencies = new Float64Array(latencySamplesMax);
    let samples = 0;
    let acked = 0;
    let errors = 0;
    let measuring = false;
    let windowStart = 0;
    let windowEnd = Infinity;
    const loop = new LoadLoop(workload, {
      depth: 1,
      onAck: (ack: Ack) => {
        if (!ack.outcome.ok) return void (errors += 1);
        if (!measuring || ack.ackAt > windowEnd) return;
        acked += 1;
        if (ack.sentAt >= windowStart && samples < latencySamplesMax) latencies[samples++] = ack.ackAt - ack.sentAt;
      },
    });
    loop.start();
    progress(`bare pipeline c=${options.concurrency}: warm-up ${options.warmupSeconds} s, then ${options.measureSeconds} s measured`);
    await new Promise((done) => setTimeout(done, options.warmupSeconds * 1000));
    const labels = ["bare primary", "bare backup 1", "bare backup 2"];
    const sampler = new UsageSampler([2, 0, 1].map((position, order) => ({ label: labels[order], pid: children[position].process.pid! })));
    const eventsBefore = workload.clients.reduce((sum, client) => sum + client.events, 0);
    sampler.start();
    windowStart = performance.now();
    measuring = true;
    await new Promise((done) => setTimeout(done, options.measureSeconds * 1000));
    windowEnd = performance.now();
    const usage = sampler.stop();
    const eventsAfter = workload.clients.reduce((sum, client) => sum + client.events, 0);
    await loop.stop();
    const seconds = (windowEnd - windowStart) / 1000;
    const result: BareLevel = {
      concurrency: options.concurrency,
      writesPerSecond: acked / seconds,
      latency: summarize(latencies.subarray(0, samples)),
      eventsPerSecond: (eventsAfter - eventsBefore) / seconds,
      errors,
      usage,
      otherCpuPercent: otherCpuPercent(usage),
      measureSeconds: seconds,
    };
    progress(
      `bare pipeline c=${options.concurrency}: ${result.writesPerSecond.toFixed(0)} writes/s, p50 ${result.latency.p50.toFixed(2)} ms, p99 ${result.latency.p99.toFixed(2)} ms; ` +
        `CPU ${usage.processes.map((p) => `${p.label} ${p.cpuPercent.toFixed(0)}%`).join(", ")}, bench ${usage.benchCpuPercent.toFixed(0)}%, other jobs ${result.otherCpuPercent.toFixed(0)}%`,
    );
    return result;
  } finally {
    workload?.close();
    await stopChildren(children);
    rmSync(dir, { recursive: true, force: true });
  }
}
