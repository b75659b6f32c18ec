// npm run fault -- --seed S            replay one schedule
// npm run fault -- --schedules N       run N schedules (seeds start..start+N-1)
// npm run soak -- --minutes M          run schedules until M minutes have passed
import { parseArgs } from "node:util";
import { formatResult, runFaultSchedule } from "./run.js";

const usage = `Usage:
  npm run fault -- --seed S [--verbose]      replay the schedule of seed S
  npm run fault -- --schedules N [--start S]  run N schedules
  npm run soak -- --minutes M [--start S]     run schedules for M minutes
Options: --clients N (3), --duration-ms D (6000 per schedule), --verbose (print each fault as it happens)
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    strict: true,
    options: {
      seed: { type: "string" },
      schedules: { type: "string" },
      start: { type: "string", default: "1" },
      soak: { type: "boolean", default: false },
      minutes: { type: "string" },
      clients: { type: "string", default: "3" },
      "duration-ms": { type: "string", default: "6000" },
      verbose: { type: "boolean", default: false },
      plant: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return void process.stdout.write(usage);
  const base = { clients: Number(values.clients), durationMs: Number(values["duration-ms"]), plant: values.plant as "no-dedup" | "ack-before-backups" | undefined, log: values.verbose ? (line: string) => process.stderr.write(`  ${line}\n`) : undefined };
  const deadline = values.soak ? Date.now() + Number(values.minutes ?? "30") * 60_000 : Infinity;
  const seeds: number[] = [];
  if (values.seed !== undefined) seeds.push(Number(values.seed));
  else if (!values.soak) for (let i = 0; i < Number(values.schedules ?? "10"); i += 1) seeds.push(Number(values.start) + i);

  let run = 0;
  let failed = 0;
  let acknowledged = 0;
  const byClass = new Map<string, number>();
  const started = Date.now();
  for (let seed = seeds[0] ?? Number(values.start); ; seed += 1) {
    if (values.soak ? Date.now() >= deadline : run >= seeds.length) break;
    const result = await runFaultSchedule({ seed: values.soak ? seed : seeds[run], ...base });
    run += 1;
    acknowledged += result.acknowledged;
    if (result.violations.length > 0) failed += 1;
    for (const violation of result.violations) byClass.set(violation.class, (byClass.get(violation.class) ?? 0) + 1);
    process.stdout.write(`${formatResult(result)}\n`);
  }
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  const classes = [...byClass].map(([kind, count]) => `${kind} ${count}`).join(", ") || "none";
  process.stdout.write(`\n${run} schedules in ${minutes} min, ${acknowledged} acknowledged writes checked; schedules with violations: ${failed}; violations by class: ${classes}\n`);
  process.exitCode = failed > 0 ? 1 : 0;
}

void main();
