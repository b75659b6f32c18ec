// Turns bench results into docs/performance.md (tables, targets, profile summary) and an SVG chart.
import { existsSync, readFileSync } from "node:fs";
import type { BareLevel } from "./bare.js";
import type { LastConfigProbe, RttLimit, SqliteLimit } from "./limits.js";
import type { CatchUpResult, FailoverTrial, LevelResult, MillionResult, ProfileResult } from "./phases.js";
import type { ProfileSummary } from "./profile.js";
import { bulkClients, bulkDepth, failoverBudgetMs } from "./consts.js";
import { median } from "./stats.js";

export type MachineInfo = { cpuModel: string; cores: number; memoryGb: number; node: string; platform: string; kernel: string; loadAverage: number[] };

export type RunResults = {
  date: string;
  command: string;
  /** The product code measured (git commit and uncommitted changes). */
  version: string;
  machine: MachineInfo;
  settings: { levels: number[]; warmupSeconds: number; measureSeconds: number; groupSize: number; quick: boolean; skipped: string[] };
  levels: LevelResult[];
  failover: FailoverTrial[] | null;
  catchUp: CatchUpResult | null;
  million: MillionResult | null;
  limits: { sqlite: SqliteLimit[]; rtt: RttLimit | null; lastConfig?: LastConfigProbe } | null;
  profile: ProfileResult | null;
  /** The same levels on the bare pipeline (bench/bare-server.ts); absent in reports saved before it existed. */
  bare?: BareLevel[] | null;
  /** Phases that failed, with their error; the report shows them instead of results. */
  phaseErrors: Partial<Record<string, string>>;
  durationSeconds: number;
  /** Hand-written analysis (bench/analysis.md), included verbatim. */
  analysis: string | null;
};

export type TargetCheck = { target: string; measured: string; ratio: string; met: boolean | null; note: string };

const fixed = (value: number, digits = 0) => (Number.isFinite(value) ? value.toFixed(digits) : "n/a");
const ms = (value: number) => (Number.isFinite(value) ? (value < 10 ? value.toFixed(2) : value.toFixed(1)) : "n/a");
const thousands = (value: number) => (Number.isFinite(value) ? Math.round(value).toLocaleString("en-US") : "n/a");

/** ratio = measured / target; for "at least" targets >= 1 is met, for "at most" targets <= 1 is met. */
function check(target: string, measured: number, limit: number, kind: "atLeast" | "atMost", unit: string, note = ""): TargetCheck {
  if (!Number.isFinite(measured)) return { target, measured: "not measured", ratio: "n/a", met: null, note };
  const ratio = measured / limit;
  const met = kind === "atLeast" ? ratio >= 1 : ratio <= 1;
  const shown = unit === "/s" ? `${thousands(measured)}/s` : `${ms(measured)} ${unit}`;
  const ratioText = kind === "atLeast" ? `${ratio.toFixed(2)}× of target` : `${ratio.toFixed(2)}× the limit`;
  return { target, measured: shown, ratio: ratioText, met, note };
}

export function evaluateTargets(results: RunResults): TargetCheck[] {
  const level = (c: number) => results.levels.find((candidate) => candidate.concurrency === c);
  const bare = (c: number) => results.bare?.find((candidate) => candidate.concurrency === c);
  // What the bare pipeline reached at the same level: whether the target is within this machine's reach.
  const bareRate = (c: number) => (bare(c) ? `the bare pipeline: ${thousands(bare(c)!.writesPerSecond)}/s` : "");
  const bareLatency = (c: number, which: "p50" | "p99") => (bare(c) ? `the bare pipeline: ${ms(bare(c)!.latency[which])} ms` : "");
  const checks: TargetCheck[] = [];
  const l1 = level(1);
  checks.push(check("c=1: ≥ 1,500 writes/s", l1?.writesPerSecond ?? NaN, 1500, "atLeast", "/s", bareRate(1)));
  checks.push(check("c=1: p50 ≤ 0.7 ms", l1?.latency.p50 ?? NaN, 0.7, "atMost", "ms", bareLatency(1, "p50")));
  const l16 = level(16);
  checks.push(check("c=16: ≥ 10,000 writes/s", l16?.writesPerSecond ?? NaN, 10000, "atLeast", "/s", bareRate(16)));
  checks.push(check("c=16: p99 ≤ 5 ms", l16?.latency.p99 ?? NaN, 5, "atMost", "ms", bareLatency(16, "p99")));
  const l64 = level(64);
  checks.push(check("c=64: ≥ 21,000 writes/s", l64?.writesPerSecond ?? NaN, 21000, "atLeast", "/s", bareRate(64)));
  checks.push(check("c=64: p99 ≤ 10 ms", l64?.latency.p99 ?? NaN, 10, "atMost", "ms", bareLatency(64, "p99")));
  checks.push(check("c=256: ≥ 30,000 writes/s", level(256)?.writesPerSecond ?? NaN, 30000, "atLeast", "/s", bareRate(256)));
  const trials = (kind: "kill" | "freeze") => (results.failover ?? []).filter((trial) => trial.kind === kind).map((trial) => trial.failoverMs);
  checks.push(check("failover after kill -9: median ≤ 150 ms", median(trials("kill")), 150, "atMost", "ms", "kill → first write acknowledged by the new primary"));
  checks.push(check("failover after a freeze (SIGSTOP): median ≤ 500 ms", median(trials("freeze")), 500, "atMost", "ms", "freeze → first write acknowledged by the new primary"));
  const catchUp = results.catchUp;
  const catchUpCheck = check(
    "catch-up of 100k entries ≤ 2 s",
    catchUp ? catchUp.listeningToInSyncMs : NaN,
    2000,
    "atMost",
    "ms",
    catchUp ? `${thousands(catchUp.entriesBehind)} entries behind; from the restarted server accepting connections to the primary adding it to the in-sync set` : "",
  );
  checks.push(partial(catchUpCheck, catchUp ? catchUp.entriesBehind : NaN, 100_000, "entries"));
  const million = results.million;
  const rssMax = million ? Math.max(...Object.values(million.rssAfterMb)) : NaN;
  const rssCheck = check("RSS ≤ 150 MB per server with 1M stored messages", rssMax, 150, "atMost", "MB", million ? `largest server RSS right after loading; ${thousands(million.storedMessages)} messages stored` : "skipped in this run");
  checks.push(partial(rssCheck, million ? million.storedMessages : NaN, 1_000_000, "stored messages"));
  return checks;
}

/**
 * A check measured on less than the target's amount (a time limit cut the load short): a miss stays
 * a miss (more data would not help), a pass is inconclusive.
 */
function partial(result: TargetCheck, amount: number, required: number, what: string): TargetCheck {
  if (!Number.isFinite(amount) || amount >= required * 0.99 || result.met === null) return result;
  const note = `${result.note}; measured with only ${thousands(amount)} of ${thousands(required)} ${what} (the load stopped early)`;
  return result.met ? { ...result, met: null, note: `${note}: inconclusive` } : { ...result, note: `${note}: missed even so` };
}

function metText(check: TargetCheck): string {
  if (check.met !== null) return check.met ? "**met**" : "**missed**";
  return check.measured === "not measured" ? "not measured" : "inconclusive";
}

// ---- chart -------------------------------------------------------------------------------------

/** Bars: acknowledged writes/s (left axis); line: p99 latency in ms (right axis); one group per concurrency level. */
export function renderChart(levels: LevelResult[], bare: BareLevel[] = []): string {
  const width = 720;
  const height = 380;
  const left = 80;
  const right = 80;
  // Room for the legend under the title when the bare pipeline is drawn too.
  const top = bare.length > 0 ? 70 : 50;
  const bottom = 60;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const bareAt = (level: LevelResult) => bare.find((candidate) => candidate.concurrency === level.concurrency);
  const maxRate = niceCeiling(Math.max(1, ...levels.map((level) => Math.max(level.writesPerSecond, bareAt(level)?.writesPerSecond ?? 0))));
  const maxP99 = niceCeiling(Math.max(0.1, ...levels.map((level) => level.latency.p99)));
  const slot = plotWidth / Math.max(1, levels.length);
  const x = (index: number) => left + slot * index + slot / 2;
  const yRate = (value: number) => top + plotHeight - (value / maxRate) * plotHeight;
  const yP99 = (value: number) => top + plotHeight - (value / maxP99) * plotHeight;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  parts.push(`<text x="${width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">Chat+: acknowledged writes/s and p99 latency vs concurrent clients</text>`);
  for (let tick = 0; tick <= 4; tick += 1) {
    const rate = (maxRate / 4) * tick;
    const y = yRate(rate);
    parts.push(`<line x1="${left}" y1="${y}" x2="${left + plotWidth}" y2="${y}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 8}" y="${y + 4}" text-anchor="end" fill="#1f5fa8">${thousands(rate)}</text>`);
    parts.push(`<text x="${left + plotWidth + 8}" y="${y + 4}" fill="#c0392b">${ms((maxP99 / 4) * tick)}</text>`);
  }
  parts.push(`<text x="20" y="${top + plotHeight / 2}" transform="rotate(-90 20 ${top + plotHeight / 2})" text-anchor="middle" fill="#1f5fa8">writes/s (bars)</text>`);
  parts.push(`<text x="${width - 20}" y="${top + plotHeight / 2}" transform="rotate(90 ${width - 20} ${top + plotHeight / 2})" text-anchor="middle" fill="#c0392b">p99 latency, ms (line)</text>`);
  const barWidth = Math.min(80, slot * 0.5);
  if (bare.length > 0) {
    parts.push(`<rect x="${left + 8}" y="${top - 34}" width="10" height="10" fill="#4a90d9"/><text x="${left + 22}" y="${top - 25}">Chat+</text>`);
    parts.push(`<rect x="${left + 70}" y="${top - 34}" width="10" height="10" fill="#d5d5d5"/><text x="${left + 84}" y="${top - 25}">bare pipeline (bench/bare-server.ts)</text>`);
  }
  for (const [index, level] of levels.entries()) {
    const floor = bareAt(level);
    if (floor) {
      // Behind the Chat+ bar and wider: what the I/O alone allows at this level.
      const yFloor = yRate(floor.writesPerSecond);
      parts.push(`<rect x="${x(index) - barWidth * 0.7}" y="${yFloor}" width="${barWidth * 1.4}" height="${top + plotHeight - yFloor}" fill="#d5d5d5"/>`);
      parts.push(`<text x="${x(index)}" y="${yFloor - 6}" text-anchor="middle" fill="#777">${thousands(floor.writesPerSecond)}</text>`);
    }
    const y = yRate(level.writesPerSecond);
    parts.push(`<rect x="${x(index) - barWidth / 2}" y="${y}" width="${barWidth}" height="${top + plotHeight - y}" fill="#4a90d9"/>`);
    parts.push(`<text x="${x(index)}" y="${y - 6}" text-anchor="middle" fill="#1f5fa8">${thousands(level.writesPerSecond)}</text>`);
    parts.push(`<text x="${x(index)}" y="${top + plotHeight + 20}" text-anchor="middle">c = ${level.concurrency}</text>`);
  }
  const points = levels.map((level, index) => `${x(index)},${yP99(level.latency.p99)}`).join(" ");
  parts.push(`<polyline points="${points}" fill="none" stroke="#c0392b" stroke-width="2"/>`);
  for (const [index, level] of levels.entries()) {
    parts.push(`<circle cx="${x(index)}" cy="${yP99(level.latency.p99)}" r="4" fill="#c0392b"/>`);
    parts.push(`<text x="${x(index) + 8}" y="${yP99(level.latency.p99) - 8}" fill="#c0392b">${ms(level.latency.p99)} ms</text>`);
  }
  parts.push(`<line x1="${left}" y1="${top + plotHeight}" x2="${left + plotWidth}" y2="${top + plotHeight}" stroke="#333"/>`);
  parts.push(`<text x="${width / 2}" y="${height - 16}" text-anchor="middle">concurrent clients (closed loop, one outstanding write each)</text>`);
  parts.push(`</svg>`);
  return `${parts.join("\n")}\n`;
}

function niceCeiling(value: number): number {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

// ---- markdown ------------------------------------------------------------------------------------

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(" | ")} |`, `| ${header.map(() => "---").join(" | ")} |`, ...rows.map((row) => `| ${row.join(" | ")} |`)].join("\n");
}

function errorsText(errors: Record<string, number>): string {
  const entries = Object.entries(errors);
  return entries.length === 0 ? "0" : entries.map(([code, count]) => `${code}: ${count}`).join(", ");
}

export function renderMarkdown(results: RunResults, chartFile: string): string {
  const out: string[] = [];
  const { machine, settings } = results;
  out.push(`# Chat+ performance`);
  out.push("");
  out.push(`Generated by \`bench/bench.ts\` on ${results.date} in ${fixed(results.durationSeconds)} s. Regenerate with:`);
  out.push("");
  out.push("```bash");
  out.push(results.command);
  out.push("```");
  out.push("");
  out.push(`Everything above the "Analysis" section is produced by the run; the analysis is \`bench/analysis.md\`, written by hand after reading a run like this one.`);
  out.push("");
  out.push("## Machine");
  out.push("");
  out.push(
    table(
      ["", ""],
      [
        ["CPU", `${machine.cpuModel}, ${machine.cores} cores (os.cpus())`],
        ["memory", `${fixed(machine.memoryGb, 1)} GB`],
        ["Node.js", machine.node],
        ["Chat+ code measured", results.version],
        ["OS", `${machine.platform} ${machine.kernel}`],
        ["load average at start (1, 5, 15 min)", machine.loadAverage.map((value) => value.toFixed(2)).join(", ")],
      ],
    ),
  );
  out.push("");
  out.push(
    `The three servers, the load generator (this process) and whatever else runs on the machine share these ${machine.cores} cores; ` +
      `all traffic is on 127.0.0.1. The "other jobs" column shows CPU used during the window by processes that are not part of the benchmark ` +
      `(machine CPU from /proc/stat minus the servers and the bench): anything above a few % means the numbers are depressed by contention.`,
  );
  out.push("");
  out.push("## Setup");
  out.push("");
  out.push(
    [
      `- Cluster: 3 servers (\`server.ts\`, started by \`tests/helpers/cluster.ts\` as \`node --import tsx server.ts\`), each with its own SQLite file in WAL mode with \`synchronous=FULL\` (the default \`--durability full\`). A write is acknowledged only after every in-sync server fsynced it.`,
      `- Clients: raw protocol clients (\`bench/client.ts\`), one TCP connection each, \`hello\` with a clientId, \`register\` (a new user per client), then a **closed loop**: one outstanding write per client, the next sent as soon as the previous is acknowledged. Latency is from writing the request to reading its response, per request.`,
      `- Writes: 256-byte bodies, alternating a channel \`post\` and a \`send_dm\`. Clients form groups of ${settings.groupSize}; each group has its own channel (created by its first member, joined by the others), and DMs go to the next member of the group. So a post is pushed to ${settings.groupSize} online members (sender included) and a DM to 2 (sender and recipient): about ${((settings.groupSize + 2) / 2).toFixed(1)} push events per write. Nobody posts to #general, which every user joins by default: with 256 clients online that would be 256 pushes per post.`,
      `- Per level: a fresh cluster (so no level inherits the log of the one before), ${settings.warmupSeconds} s warm-up, then a ${settings.measureSeconds} s measuring window. Writes/s counts acknowledgements inside the window; latencies are of writes sent inside it. CPU is utime+stime from /proc/<pid>/stat over the window (100% = one core), RSS is VmRSS at the end of the window.`,
      settings.skipped.length ? `- Skipped in this run: ${settings.skipped.join(", ")}.` : `- Nothing was skipped.`,
    ].join("\n"),
  );
  out.push("");
  const failures = Object.entries(results.phaseErrors);
  if (failures.length > 0) {
    out.push("## Phases that failed in this run");
    out.push("");
    for (const [phase, error] of failures) out.push(`- **${phase}**: ${error}`);
    out.push("");
  }
  out.push("## Targets");
  out.push("");
  const checks = evaluateTargets(results);
  out.push(table(["target", "measured", "ratio", "result", "note"], checks.map((c) => [c.target, c.measured, c.ratio, metText(c), c.note])));
  out.push("");
  out.push("## Throughput and latency by concurrency");
  out.push("");
  if (results.levels.length > 0) {
    const primaries = [...new Set(results.levels.map((level) => level.primary))];
    out.push(
      table(
        ["clients", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "pushes/s", ...[1, 2, 3].map((id) => `server ${id}${primaries.includes(id) ? " (primary)" : ""} CPU / RSS`), "bench CPU", "other jobs CPU", "errors and incidents"],
        results.levels.map((level) => [
          String(level.concurrency),
          thousands(level.writesPerSecond),
          ms(level.latency.p50),
          ms(level.latency.p99),
          ms(level.latency.p999),
          ms(level.latency.max),
          thousands(level.eventsPerSecond),
          ...[1, 2, 3].map((id) => {
            const usage = level.usage.processes.find((process) => process.label === `server ${id}`);
            return usage ? `${fixed(usage.cpuPercent)}% / ${fixed(usage.rssMb)} MB` : "n/a";
          }),
          `${fixed(level.usage.benchCpuPercent)}%`,
          `${fixed(level.otherCpuPercent)}%`,
          errorsText(level.errors) + (level.freezes.length > 0 ? `; **${level.freezes.length} self-detected freezes** (${level.freezes.map((f) => `s${f.server} ${f.gapMs} ms`).join(", ")})` : "") + (level.failovers > 0 ? `; **${level.failovers} client failovers** (primary ${level.primary} → ${level.primaryAfter ?? "?"})` : ""),
        ]),
      ),
    );
    out.push("");
    out.push(`<img src="${chartFile}" alt="writes/s and p99 latency against concurrency" width="720">`);
    out.push("");
    out.push("Acknowledged writes in each second of the measuring window (does throughput hold while the log grows?):");
    out.push("");
    out.push(table(["clients", "writes per second, second by second"], results.levels.map((level) => [String(level.concurrency), level.perSecond.map((count) => thousands(count)).join(", ")])));
    out.push("");
    // Reports saved before the disk columns existed have no written bytes: they get no table.
    const withDisk = results.levels.filter((level) => level.usage.processes.some((process) => process.writtenKbPerSecond !== undefined));
    if (withDisk.length > 0) {
      out.push(
        "The disk and the cores in the same windows: what each server caused to be written to storage (`write_bytes` in /proc/<pid>/io: its WAL, checkpoints into its database file) " +
          "per acknowledged write; the block device's own counters (/sys/dev/block/…/stat; every server's data is on it), where a commit's fsync waits for its writes to complete; " +
          "and how much of the window each server's event loop was ready to run but waited for a core (run-queue delay of its main thread, /proc/<pid>/schedstat).",
      );
      out.push("");
      out.push(
        table(
          ["clients", ...[1, 2, 3].map((id) => `server ${id} KB written per write`), "device writes/s", "ms per device write", "flushes/s", "ms per flush", "device busy", ...[1, 2, 3].map((id) => `server ${id} waiting for a core`)],
          withDisk.map((level) => {
            const disk = level.usage.disk;
            return [
              String(level.concurrency),
              ...[1, 2, 3].map((id) => {
                const usage = level.usage.processes.find((process) => process.label === `server ${id}`);
                return usage?.writtenKbPerSecond === undefined || !(level.writesPerSecond > 0) ? "n/a" : fixed(usage.writtenKbPerSecond / level.writesPerSecond, 1);
              }),
              ...(disk
                ? [thousands(disk.writesPerSecond), fixed(disk.msPerWrite, 3), thousands(disk.flushesPerSecond), fixed(disk.msPerFlush, 3), `${fixed(disk.busyPercent)}%`]
                : ["n/a", "n/a", "n/a", "n/a", "n/a"]),
              ...[1, 2, 3].map((id) => {
                const wait = level.usage.processes.find((process) => process.label === `server ${id}`)?.runQueueWaitPercent;
                return wait === undefined ? "n/a" : `${fixed(wait)}%`;
              }),
            ];
          }),
        ),
      );
      out.push("");
    }
  } else {
    out.push("No load levels were run.");
    out.push("");
  }
  out.push(...bareSection(results));
  out.push("## Failover");
  out.push("");
  if (results.failover && results.failover.length > 0) {
    out.push(
      `Under a closed-loop load of ${results.failover.length ? "16" : ""} clients, the primary is killed (\`kill -9\`: its sockets close at once) or frozen (\`SIGSTOP\`: no FIN, only missing heartbeats reveal it). ` +
        `Clients find the new primary through monitor connections that ping every machine every 10 ms (\`bench/client.ts\` PrimaryLocator), reconnect, \`auth\` with their session token and re-send every unanswered write with the same clientId and request id (exactly-once: the server finds a retried request id in its log). ` +
        `"Failover" is from the signal to the first write acknowledged by another server; "longest stall" is the longest any single write waited, from its first send to its acknowledgement. ` +
        `After each trial the old primary is restarted (kill) or resumed (freeze) and the bench waits until all three servers are in sync again. ` +
        `The two timeline columns come from the servers' own logs (pino timestamps of the "role change" lines, relative to the signal; wall clocks of one machine): when the successor became candidate, and when its new config committed and it began serving.`,
    );
    out.push("");
    out.push(
      table(
        ["kind", "trial", "old → new primary", "successor logs \"candidate\" (ms)", "successor serving (ms)", "failover ms", "longest stall ms", "writes re-sent", "errors", "afterwards"],
        results.failover.map((trial, index) => [
          trial.kind,
          String(index + 1),
          `${trial.oldPrimary} → ${trial.newPrimary ?? "none"}`,
          trial.timeline.candidateMs === null ? "n/a" : String(trial.timeline.candidateMs),
          trial.timeline.servingMs === null ? "n/a" : String(trial.timeline.servingMs),
          ms(trial.failoverMs),
          ms(trial.maxStallMs),
          String(trial.resent),
          errorsText(trial.errors),
          trial.incidentAfter ? `**${trial.incidentAfter}**` : "back in sync",
        ]),
      ),
    );
    out.push("");
    const rows = (["kill", "freeze"] as const).map((kind) => {
      const trials = results.failover!.filter((trial) => trial.kind === kind);
      const failover = trials.map((trial) => trial.failoverMs);
      const stall = trials.map((trial) => trial.maxStallMs);
      return [kind, String(trials.length), `${ms(median(failover))} (${ms(Math.min(...failover))}–${ms(Math.max(...failover))})`, `${ms(median(stall))} (${ms(Math.min(...stall))}–${ms(Math.max(...stall))})`];
    });
    out.push(table(["kind", "trials", "failover ms: median (range)", "longest stall ms: median (range)"], rows));
    out.push("");
    out.push("<details><summary>Role changes the servers logged during each trial (ms after the signal)</summary>");
    out.push("");
    for (const [index, trial] of results.failover.entries()) {
      out.push(`Trial ${index + 1} (${trial.kind} server ${trial.oldPrimary}, first write acknowledged by the new primary at +${ms(trial.failoverMs)} ms):`);
      out.push("");
      for (const event of trial.timeline.events) out.push(`- ${event}`);
      out.push("");
    }
    out.push("</details>");
  } else {
    out.push("Skipped in this run.");
  }
  out.push("");
  out.push("## Catch-up");
  out.push("");
  if (results.catchUp) {
    const c = results.catchUp;
    out.push(
      `Backup server ${c.downServer} was killed; the primary (server ${c.primaryBefore}) dropped it from the in-sync set, then ${thousands(c.write.entries)} writes were made ` +
        `(pipelined, ${bulkClients} clients × ${bulkDepth} in flight: ${thousands(c.write.writesPerSecond)} writes/s on average while two servers were in sync; the servers logged ${c.freezesWhileWriting} self-detected freezes meanwhile` +
        `${c.write.timedOut ? `; **stopped by the ${fixed(c.write.seconds)} s time limit before ${thousands(c.write.requested)}**` : ""}` +
        `${Object.keys(c.write.errors).length ? `; **writes failed: ${errorsText(c.write.errors)}**` : ""}), ` +
        `leaving it ${thousands(c.entriesBehind)} log entries behind. Then it was restarted. The in-sync moment is ${c.detectedBy}; ` +
        `a ping of the primary right after listed members ${JSON.stringify(c.confirmedMembers)}.`,
    );
    out.push("");
    out.push(
      table(
        ["from", "to", "ms"],
        [
          ["process spawned", "accepting client connections (node + tsx startup, store open)", ms(c.spawnToListeningMs)],
          ["accepting client connections", "primary adds it to the in-sync set", ms(c.listeningToInSyncMs)],
          ["process spawned", "in the in-sync set", ms(c.spawnToInSyncMs)],
          ["in the in-sync set", "every entry it logged in the catch-up applied to its state tables", c.inSyncToAppliedMs === null ? "not seen" : ms(c.inSyncToAppliedMs)],
        ],
      ),
    );
    out.push("");
    out.push(`Catch-up rate: ${thousands(c.entriesBehind / (c.listeningToInSyncMs / 1000))} entries/s.`);
    out.push("");
    out.push(
      "A catching-up server logs the entries the primary has already committed and applies them afterwards (docs/architecture.md §7.1): " +
        "the in-sync set needs the log, and the state follows. Until the last row above, a takeover by this server would wait for the rest to be applied.",
    );
    out.push("");
    out.push("Write rate while the backlog was written (two servers in sync):");
    out.push("");
    out.push(bulkTicksTable(c.write));
  } else {
    out.push("Skipped in this run.");
  }
  out.push("");
  out.push("## Memory with 1M stored messages");
  out.push("");
  if (results.million) {
    const m = results.million;
    out.push(
      `${thousands(m.write.entries)} posts and DMs were written (pipelined, ${bulkClients} clients × ${bulkDepth} in flight, ${thousands(m.write.writesPerSecond)} writes/s on average over ${fixed(m.write.seconds)} s` +
        `${m.write.timedOut ? `; **stopped by the time limit before ${thousands(m.write.requested)}**` : ""}` +
        `${Object.keys(m.write.errors).length ? `; **writes failed: ${errorsText(m.write.errors)}** (BENCH_NO_PRIMARY: no server served as primary for the clients' whole ${failoverBudgetMs / 1000} s failover budget, so every load lane gave up)` : ""}); the primary then held ${thousands(m.storedMessages)} messages in total. The servers logged ${m.freezes.length} self-detected freezes during the load${m.freezes.length ? ` (longest gaps: ${[...m.freezes].sort((a, b) => b.gapMs - a.gapMs).slice(0, 8).map((f) => `s${f.server} ${f.gapMs} ms`).join(", ")})` : ""}.`,
    );
    out.push("");
    out.push(
      table(
        ["server", "RSS right after, MB", `RSS after ${m.idleSeconds} s idle, MB`, "max RSS during the load, MB"],
        [1, 2, 3].map((id) => [String(id), fixed(m.rssAfterMb[id]), fixed(m.rssAfterIdleMb[id]), fixed(m.rssMaxMb[id])]),
      ),
    );
    out.push("");
    out.push("Write rate and RSS during the load:");
    out.push("");
    out.push(bulkTicksTable(m.write));
    if (m.memoryBefore && m.memoryAfter) {
      const kinds = [...new Set([...Object.values(m.memoryBefore), ...Object.values(m.memoryAfter)].flatMap((row) => Object.keys(row ?? {})))];
      out.push("");
      out.push("What the RSS is made of (from /proc/<pid>/smaps), MB, at the start of this load (the same servers had just run the catch-up phase) → right after it:");
      out.push("");
      out.push(
        table(
          ["mapping", ...[1, 2, 3].map((id) => `server ${id}`)],
          kinds
            .map((kind) => [kind, ...[1, 2, 3].map((id) => `${fixed(m.memoryBefore[id]?.[kind] ?? 0)} → ${fixed(m.memoryAfter[id]?.[kind] ?? 0)}`)])
            .filter((row) => row.slice(1).some((cell) => cell !== "0 → 0")),
        ),
      );
    }
    if (m.heap) {
      const h = m.heap;
      out.push("");
      out.push(
        `Heap snapshot of the primary (server ${h.server}) afterwards: the JavaScript heap held ${fixed(h.summary.totalMb)} MB of its ${fixed(h.rssMb)} MB RSS; ` +
          `the rest is the runtime itself (code, the tsx loader, thread stacks), SQLite's page cache and malloc'd buffers.`,
      );
      out.push("");
      out.push(table(["kind", "count", "MB"], h.summary.byType.map((row) => [row.name, thousands(row.count), fixed(row.mb, 1)])));
      out.push("");
      out.push(table(["largest object kinds (constructor)", "count", "MB"], h.summary.topObjects.map((row) => [`\`${row.name}\``, thousands(row.count), fixed(row.mb, 1)])));
    }
  } else {
    out.push("Skipped in this run.");
  }
  out.push("");
  out.push("## Machine limits");
  out.push("");
  if (results.limits) {
    out.push("Measured in the same run, before the cluster starts, on the same file system as the servers' data (os.tmpdir()).");
    out.push("");
    out.push(
      table(
        ["what", "result"],
        [
          ...results.limits.sqlite.map((s) => [
            `better-sqlite3 inserts, WAL + synchronous=FULL, ${s.rowsPerTransaction} row${s.rowsPerTransaction === 1 ? "" : "s"} per transaction`,
            `${thousands(s.rowsPerSecond)} rows/s (${thousands(s.transactionsPerSecond)} commits/s; commit p50 ${ms(s.commitP50Ms)} ms, p99 ${ms(s.commitP99Ms)} ms)`,
          ]),
          ...(results.limits.rtt
            ? [["loopback TCP round trip, two processes, one message at a time", `p50 ${ms(results.limits.rtt.summary.p50)} ms, p99 ${ms(results.limits.rtt.summary.p99)} ms, mean ${ms(results.limits.rtt.summary.mean)} ms (${thousands(results.limits.rtt.roundTripsPerSecond)} round trips/s)`]]
            : []),
        ],
      ),
    );
    out.push("");
    const probe = results.limits.lastConfig;
    if (probe) {
      out.push(
        `The servers' own \`Store.lastConfig()\` (store/store.ts; the replication core calls it through \`Replica.config()\` on every tick, heartbeat, ack and ping), ` +
          `timed on a temp database holding one config entry followed by N other entries, reopened at each point. The Store answers it from memory: it keeps the newest config as entries are written, ` +
          `and reads it from disk only when it opens, after a truncation or a replay, and after a failed write transaction, with \`${probe.sql}\` (SQLite's plan: **${probe.plan}**).`,
      );
      out.push("");
      out.push(
        table(
          ["entries after the newest config entry", "ns per Store.lastConfig() call", "ms per on-disk query"],
          probe.costs.map((cost) => [
            thousands(cost.entriesSinceConfig),
            (cost.msPerCall * 1e6).toFixed(1),
            cost.queryMsPerCall === undefined ? "n/a" : cost.queryMsPerCall.toFixed(4),
          ]),
        ),
      );
      out.push("");
    }
    const single = results.limits.sqlite.find((s) => s.rowsPerTransaction === 1);
    if (single && results.limits.rtt) {
      const floorMs = results.limits.rtt.summary.p50 * 2 + single.commitP50Ms;
      out.push(
        `A lone write (c=1) needs at least a client→primary round trip, then the primary's commit and, overlapping it (the append is sent before the primary's own fsync), ` +
          `a primary→backup round trip plus the backup's commit: about 2 × RTT + 1 commit ≈ ${ms(floorMs)} ms at the medians measured here, ` +
          `i.e. up to ~${thousands(1000 / floorMs)} writes/s for one client before any JavaScript runs.`,
      );
    }
  } else {
    out.push("Skipped in this run.");
  }
  out.push("");
  out.push("## Where the time goes: CPU profile");
  out.push("");
  if (results.profile) {
    const p = results.profile;
    out.push(
      `A separate cluster ran with \`node --cpu-prof\` under the same workload at c=${p.concurrency} (${thousands(p.writesPerSecond)} writes/s, p99 ${ms(p.latency.p99)} ms under the profiler). ` +
        `Only samples inside the ${fixed(p.seconds, 1)} s measuring window are counted (profile timestamps and the bench share CLOCK_MONOTONIC), so startup and registration are left out. ` +
        `Percentages are of the main thread's busy (non-idle) samples. CPU during the window: ${p.usage.processes.map((u) => `${u.label} ${fixed(u.cpuPercent)}%`).join(", ")}, bench ${fixed(p.usage.benchCpuPercent)}%, machine ${fixed(p.usage.machineCpuPercent)}%.`,
    );
    out.push("");
    if (p.incident) {
      out.push(`**Caveat: ${p.incident}** (the last of the attempts is shown).`);
      out.push("");
    }
    for (const { id, role, summary } of p.summaries) out.push(...profileSection(`Server ${id} (${role}) under load`, summary));
    if (p.catchUp && p.catchUpSummaries.length > 0) {
      out.push(
        `Then, on the same profiled cluster, backup server ${p.catchUp.server} was killed, ${thousands(p.catchUp.entries)} entries were written, and it was restarted: ` +
          `it was back in the in-sync set ${ms(p.catchUp.ms)} ms after it began accepting client connections (under the profiler), the span the catch-up target measures. The profiles below cover exactly that span.`,
      );
      out.push("");
      for (const { id, role, summary } of p.catchUpSummaries) out.push(...profileSection(`Server ${id}, ${role}, during the catch-up`, summary));
    }
  } else {
    out.push("Skipped in this run.");
    out.push("");
  }
  out.push("## Analysis");
  out.push("");
  out.push(results.analysis ?? "(no bench/analysis.md)");
  out.push("");
  return `${out.join("\n")}\n`;
}

/** CPU time per acknowledged write, in µs, from a CPU% (100 = one core) and a rate. */
function cpuPerWriteUs(cpuPercent: number | undefined, writesPerSecond: number): number {
  return cpuPercent === undefined || !(writesPerSecond > 0) ? NaN : ((cpuPercent / 100) * 1e6) / writesPerSecond;
}

function bareSection(results: RunResults): string[] {
  const out: string[] = [];
  out.push("## The bare pipeline: the floor of this design on this machine");
  out.push("");
  if (!results.bare || results.bare.length === 0) {
    out.push(results.bare === undefined ? "Not measured: this report was saved before the bench had the bare pipeline." : "Skipped in this run.");
    out.push("");
    return out;
  }
  out.push(
    "The same load generator, requests, levels and pushes, on three processes that do only the I/O of a replicated Chat+ write (`bench/bare-server.ts`). " +
      "The primary parses each request with `JSON.parse` and group-commits the writes of one event-loop turn: one SQLite transaction with one ~400-byte row per write " +
      "(`synchronous=NORMAL`, then an fdatasync of the -wal file off the event loop, as `store.ts` does) and one append frame per backup, sent before its own commit. " +
      "Each backup logs the frames of one socket read in one `synchronous=FULL` transaction and acks. The primary answers and pushes once both backups acked and its fsync returned. " +
      "It has no validation, sessions, chat tables or indexes, exactly-once ids, undo journal, replication protocol or recovery: everything Chat+ adds comes on top of these numbers. " +
      "A throughput target above the bare pipeline's rate is out of reach for this design on this machine.",
  );
  out.push("");
  const rows = results.bare.map((bare) => {
    const real = results.levels.find((level) => level.concurrency === bare.concurrency);
    const [primary, ...backups] = bare.usage.processes;
    const realPrimary = real?.usage.processes.find((process) => process.label === `server ${real.primary}`);
    const realBackups = real?.usage.processes.filter((process) => process.label !== `server ${real.primary}`) ?? [];
    const mean = (values: number[]) => values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
    const pair = (bareUs: number, realUs: number) => `${fixed(bareUs)} / ${real ? fixed(realUs) : "n/a"}`;
    return [
      String(bare.concurrency),
      thousands(bare.writesPerSecond),
      ms(bare.latency.p50),
      ms(bare.latency.p99),
      real ? thousands(real.writesPerSecond) : "n/a",
      real ? `${fixed((real.writesPerSecond / bare.writesPerSecond) * 100)}%` : "n/a",
      pair(cpuPerWriteUs(primary?.cpuPercent, bare.writesPerSecond), cpuPerWriteUs(realPrimary?.cpuPercent, real?.writesPerSecond ?? NaN)),
      pair(
        mean(backups.map((process) => cpuPerWriteUs(process.cpuPercent, bare.writesPerSecond))),
        mean(realBackups.map((process) => cpuPerWriteUs(process.cpuPercent, real?.writesPerSecond ?? NaN))),
      ),
      pair(cpuPerWriteUs(bare.usage.benchCpuPercent, bare.writesPerSecond), cpuPerWriteUs(real?.usage.benchCpuPercent, real?.writesPerSecond ?? NaN)),
      `${fixed(bare.usage.machineCpuPercent)}%`,
      `${fixed(bare.otherCpuPercent)}%`,
      String(bare.errors),
    ];
  });
  out.push(
    table(
      [
        "clients",
        "bare writes/s",
        "bare p50 ms",
        "bare p99 ms",
        "Chat+ writes/s",
        "Chat+ ÷ bare",
        "primary CPU µs per write, bare / Chat+",
        "each backup, bare / Chat+",
        "load generator, bare / Chat+",
        "bare machine CPU",
        "bare other jobs CPU",
        "bare errors",
      ],
      rows,
    ),
  );
  out.push("");
  return out;
}

function profileSection(title: string, summary: ProfileSummary): string[] {
  const out: string[] = [];
  out.push(`### ${title}: main thread busy ${fixed(summary.busyPercent)}% of the window`);
  out.push("");
  out.push("Self time by category:");
  out.push("");
  out.push(table(["category", "% of busy"], summary.categories.slice(0, 12).map((row) => [row.name, fixed(row.percent, 1)])));
  out.push("");
  out.push("Top functions by self time:");
  out.push("");
  out.push(table(["function", "where", "% self"], summary.topSelf.slice(0, 12).map((row) => [`\`${row.name}\``, row.where || "(native)", fixed(row.percent, 1)])));
  out.push("");
  out.push("Where the heaviest functions are called from (nearest Chat+ callers, share of that function's self time):");
  out.push("");
  out.push(
    table(
      ["function", "called via", "%"],
      summary.callers.flatMap((caller) => caller.paths.slice(0, 4).map((path, index) => [index === 0 ? `\`${caller.name}\`` : "", path.path, fixed(path.percent)])),
    ),
  );
  out.push("");
  out.push("Chat+ functions by inclusive time (the function and everything it calls):");
  out.push("");
  out.push(table(["function", "where", "% inclusive"], summary.topInclusive.slice(0, 12).map((row) => [`\`${row.name}\``, row.where, fixed(row.percent, 1)])));
  out.push("");
  return out;
}

function bulkTicksTable(write: { ticks: { seconds: number; done: number; writesPerSecond: number; rssMb: Record<number, number> }[] }): string {
  if (write.ticks.length === 0) return "(the load took less than one 5 s sampling period)";
  return table(
    ["time s", "written", "writes/s (last 5 s)", "RSS s1 / s2 / s3, MB"],
    write.ticks.map((tick) => [fixed(tick.seconds), thousands(tick.done), thousands(tick.writesPerSecond), [1, 2, 3].map((id) => fixed(tick.rssMb[id])).join(" / ")]),
  );
}

export function readAnalysis(path: string): string | null {
  return existsSync(path) ? readFileSync(path, "utf8").trim() : null;
}
