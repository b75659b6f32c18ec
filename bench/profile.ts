// Summarizes V8 CPU profiles (.cpuprofile, written by node --cpu-prof) over a time window.
// Profile timestamps are CLOCK_MONOTONIC microseconds, the same clock as process.hrtime in any
// process on the machine, so the bench can cut out exactly its measuring window and leave out
// startup (tsx compiling the server) and registration.
import { readFileSync } from "node:fs";
import { relative } from "node:path";

type CallFrame = { functionName: string; url: string; lineNumber: number; columnNumber: number };
type ProfileNode = { id: number; callFrame: CallFrame; children?: number[] };
type CpuProfile = { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] };

export type ProfileRow = { name: string; where: string; percent: number };
export type ProfileSummary = {
  /** Samples inside the window. */
  samples: number;
  windowMs: number;
  /** Share of the window the main thread was busy (not idle), in %. */
  busyPercent: number;
  /** Self time, % of busy samples. */
  topSelf: ProfileRow[];
  /** Inclusive time of the server's own functions (our .ts files), % of busy samples. */
  topInclusive: ProfileRow[];
  /** Self time grouped by category, % of busy samples. */
  categories: ProfileRow[];
  /** For the heaviest functions by self time: the call paths (nearest Chat+ callers) their time comes from. */
  callers: { name: string; where: string; paths: { path: string; percent: number }[] }[];
};

const callerFunctionsMax = 4;

/** Microseconds on CLOCK_MONOTONIC, the clock of .cpuprofile timestamps. */
export function monotonicMicros(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

function shortUrl(url: string, root: string): string {
  if (url.startsWith("file://")) {
    const path = url.slice("file://".length);
    const nodeModules = path.lastIndexOf("node_modules/");
    if (nodeModules !== -1) return path.slice(nodeModules);
    return relative(root, path) || path;
  }
  return url;
}

/** Which part of the system a self-time sample belongs to. */
function categoryOf(frame: CallFrame, where: string): string {
  const name = frame.functionName;
  if (name === "(garbage collector)") return "garbage collection";
  if (name === "(program)") return "(program): V8/native work not attributed to JS";
  if (where.includes("node_modules/zod")) return "zod validation";
  if (where.includes("node_modules/pino") || where.includes("sonic-boom")) return "pino logging";
  if (where.includes("better-sqlite3")) return "better-sqlite3 JS wrapper";
  if (where === "" && /^(run|get|all|iterate|exec|prepare|pragma)$/.test(name)) return "SQLite (native calls: statements, commit + fsync)";
  if (where === "" && /^(parse|stringify)$/.test(name)) return "JSON.parse / JSON.stringify";
  if (where === "" && /^(writeUtf8String|writev|writeBuffer|writeLatin1String)$/.test(name)) return "socket writes (syscalls)";
  if (where.startsWith("node:net") || where.startsWith("node:internal/stream") || where.startsWith("node:stream") || where.startsWith("node:internal/net")) return "node net/streams (JS)";
  if (where.startsWith("node:")) return "other node internals";
  if (isAppFile(where)) return `app: ${where.split(":")[0]}`;
  if (where === "") return `native: ${name || "(anonymous)"}`;
  return `other: ${where.split(":")[0]}`;
}

/**
 * Self and inclusive time per function for samples with timestamps in [fromMicros, toMicros].
 * `root` is the repository directory, for short file names.
 */
export function summarizeProfile(path: string, fromMicros: number, toMicros: number, root: string, top = 20): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const keyOf = (node: ProfileNode) => {
    const where = shortUrl(node.callFrame.url, root);
    // Line numbers of our .ts files are not meaningful (tsx compiles them without mapping the profile back).
    const line = where && !isAppFile(where) ? `:${node.callFrame.lineNumber + 1}` : "";
    return { key: `${node.callFrame.functionName || "(anonymous)"}\u0000${where}${line}`, where };
  };
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const categories = new Map<string, number>();
  let busy = 0;
  let inWindow = 0;
  let time = profile.startTime;
  for (let index = 0; index < profile.samples.length; index += 1) {
    time += profile.timeDeltas[index];
    if (time < fromMicros || time > toMicros) continue;
    inWindow += 1;
    const node = byId.get(profile.samples[index])!;
    if (node.callFrame.functionName === "(idle)") continue;
    busy += 1;
    const { key, where } = keyOf(node);
    self.set(key, (self.get(key) ?? 0) + 1);
    const category = categoryOf(node.callFrame, where);
    categories.set(category, (categories.get(category) ?? 0) + 1);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const ancestor = byId.get(id)!;
      const { key: ancestorKey, where: ancestorWhere } = keyOf(ancestor);
      if (seen.has(ancestorKey) || !isAppFile(ancestorWhere)) continue;
      seen.add(ancestorKey);
      inclusive.set(ancestorKey, (inclusive.get(ancestorKey) ?? 0) + 1);
    }
  }
  // Call paths of the heaviest self-time functions: the three nearest Chat+ frames above the leaf
  // (skipping frames named like the leaf, e.g. a pass-through wrapper).
  const heaviest = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, callerFunctionsMax).map(([key]) => key);
  const paths = new Map<string, Map<string, number>>(heaviest.map((key) => [key, new Map()]));
  time = profile.startTime;
  for (let index = 0; index < profile.samples.length; index += 1) {
    time += profile.timeDeltas[index];
    if (time < fromMicros || time > toMicros) continue;
    const node = byId.get(profile.samples[index])!;
    const leaf = keyOf(node).key;
    const counts = paths.get(leaf);
    if (!counts) continue;
    const names: string[] = [];
    for (let id = parent.get(node.id); id !== undefined && names.length < 3; id = parent.get(id)) {
      const ancestor = byId.get(id)!;
      const { where } = keyOf(ancestor);
      const name = ancestor.callFrame.functionName || "(anonymous)";
      if (!isAppFile(where) || name === node.callFrame.functionName || name === "(anonymous)") continue;
      if (names[names.length - 1] !== name) names.push(name);
    }
    const path = names.join(" ← ") || "(no Chat+ caller)";
    counts.set(path, (counts.get(path) ?? 0) + 1);
  }
  const callers = heaviest.map((key) => {
    const [name, where] = key.split("\u0000");
    const counts = paths.get(key)!;
    const total = [...counts.values()].reduce((sum, count) => sum + count, 0);
    return {
      name,
      where: where ?? "",
      paths: [...counts.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 6)
        .map(([path, count]) => ({ path, percent: total ? (count / total) * 100 : 0 })),
    };
  });
  const rows = (counts: Map<string, number>, limit: number): ProfileRow[] =>
    [...counts.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, limit)
      .map(([key, count]) => {
        const [name, where] = key.split("\u0000");
        return { name, where: where ?? "", percent: busy ? (count / busy) * 100 : 0 };
      });
  return {
    samples: inWindow,
    windowMs: (toMicros - fromMicros) / 1000,
    busyPercent: inWindow ? (busy / inWindow) * 100 : 0,
    topSelf: rows(self, top),
    topInclusive: rows(inclusive, top),
    categories: rows(categories, 30),
    callers,
  };
}

/** One of the repository's own TypeScript files (not a dependency, not node internals). */
function isAppFile(where: string): boolean {
  return /\.tsx?(:\d+)?$/.test(where) && !where.includes("node_modules") && !where.startsWith("node:");
}
