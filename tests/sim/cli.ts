// npm run sim -- --seeds N [--start S] [--mode tcp|tcp-drops|lossy|partition] [--servers N]
// npm run sim -- --seed S [--mode M] [--servers N] --verbose
// Runs seeds of the deterministic simulation and prints a summary: seeds run, violations per class
// and per network mode, time. A failing seed prints its seed, classes and the tail of its trace.
import { parseArgs } from "node:util";
import { percentile } from "../../utils.js";
import { formatFailure, runSeed, violationKinds, type NetworkMode, type SimResult } from "./harness.js";

const modes: NetworkMode[] = ["tcp", "tcp-drops", "lossy", "partition"];

const { values } = parseArgs({
  options: {
    seeds: { type: "string" },
    start: { type: "string", default: "1" },
    seed: { type: "string" },
    mode: { type: "string" },
    servers: { type: "string" },
    verbose: { type: "boolean", default: false },
    failures: { type: "string", default: "3" },
    tail: { type: "string", default: "40" },
  },
});

function fail(message: string): never {
  console.error(message);
  console.error("usage: npm run sim -- --seeds N [--start S] [--mode tcp|tcp-drops|lossy|partition] [--servers 3|4|5]\n       npm run sim -- --seed S [--mode M] [--servers N] --verbose");
  process.exit(2);
}

const mode = values.mode as NetworkMode | undefined;
if (mode !== undefined && !modes.includes(mode)) fail(`unknown --mode ${mode}`);
const servers = values.servers === undefined ? undefined : Number(values.servers);
if (servers !== undefined && !(Number.isInteger(servers) && servers >= 1 && servers <= 9)) fail("--servers must be 1..9");
const tail = Number(values.tail);

if (values.seed !== undefined) {
  const seed = Number(values.seed);
  if (!Number.isInteger(seed) || seed < 0) fail("--seed must be a non-negative integer");
  const result = runSeed({ seed, mode, servers, log: values.verbose ? (line) => console.log(line) : undefined, tailLines: Math.max(tail, 80) });
  printOne(result);
  process.exit(result.violations.length > 0 ? 1 : 0);
}

const count = Number(values.seeds ?? "100");
const start = Number(values.start);
if (!Number.isInteger(count) || count < 1) fail("--seeds must be a positive integer");
if (!Number.isInteger(start) || start < 0) fail("--start must be a non-negative integer");

const began = performance.now();
const results: SimResult[] = [];
let printed = 0;
for (let seed = start; seed < start + count; seed += 1) {
  const result = runSeed({ seed, mode, servers, tailLines: tail });
  results.push(result);
  if (result.violations.length > 0 && printed < Number(values.failures)) {
    printed += 1;
    console.log(formatFailure(result, tail));
    console.log("");
  }
}
const seconds = (performance.now() - began) / 1000;
summarize(results, seconds);
process.exit(results.some((result) => result.violations.length > 0) ? 1 : 0);

function printOne(result: SimResult): void {
  console.log(
    `seed ${result.seed}: mode ${result.mode}, ${result.servers} servers, ${result.simMs} simulated ms, ${result.steps} events, ${result.faults} faults, ` +
      `ops ${result.ops.total} (ok ${result.ops.ok}, fail ${result.ops.fail}, unknown ${result.ops.unknown}), acked ${result.acked}, committed ${result.committed}, ` +
      `converged ${result.livenessMs === null ? "never" : `${result.livenessMs}ms after faults`}, trace ${result.traceHash.slice(0, 16)}`,
  );
  for (const observation of result.observations) console.log(`  (observation, partition mode) [${observation.kind}] t=${observation.at}: ${observation.message}`);
  if (result.violations.length > 0) console.log(formatFailure(result, tail));
  else console.log("  no violations");
}

function summarize(all: SimResult[], seconds: number): void {
  const failing = all.filter((result) => result.violations.length > 0);
  console.log(`seeds ${all.length} (${start}..${start + all.length - 1}) in ${seconds.toFixed(1)}s = ${(all.length / seconds).toFixed(1)} seeds/s; failing ${failing.length}`);
  const header = ["mode", "seeds", "failing", ...violationKinds].map((cell) => cell.padStart(11)).join("");
  console.log(header);
  for (const each of [...modes, undefined]) {
    const rows = all.filter((result) => each === undefined || result.mode === each);
    if (rows.length === 0) continue;
    const cells = [each ?? "all", String(rows.length), String(rows.filter((result) => result.violations.length > 0).length)];
    for (const kind of violationKinds) cells.push(String(rows.filter((result) => result.violations.some((violation) => violation.kind === kind)).length));
    console.log(cells.map((cell) => cell.padStart(11)).join(""));
  }
  const observed = all.filter((result) => result.observations.length > 0);
  if (observed.length > 0) {
    const kinds = new Map<string, number>();
    for (const result of observed) for (const kind of new Set(result.observations.map((o) => o.kind))) kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    console.log(`partition mode (observation only, outside the safety fault model): ${[...kinds].map(([kind, n]) => `${kind} ${n}`).join(", ")}`);
  }
  const liveness = all.map((result) => result.livenessMs).filter((ms): ms is number => ms !== null).sort((a, b) => a - b);
  const ops = all.reduce((sum, result) => sum + result.ops.total, 0);
  const acked = all.reduce((sum, result) => sum + result.acked, 0);
  const faults = all.reduce((sum, result) => sum + result.faults, 0);
  const steps = all.reduce((sum, result) => sum + result.steps, 0);
  console.log(
    `faults ${faults}, client writes ${ops} (acked ${acked}), events ${steps}; convergence after faults: p50 ${percentile(liveness, 50)}ms, p99 ${percentile(liveness, 99)}ms, max ${liveness[liveness.length - 1] ?? "-"}ms`,
  );
  if (failing.length > 0) console.log(`failing seeds: ${failing.slice(0, 40).map((result) => `${result.seed}(${result.mode}:${[...new Set(result.violations.map((v) => v.kind))].join("+")})`).join(" ")}${failing.length > 40 ? " ..." : ""}`);
}
