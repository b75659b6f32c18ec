// The bounded fault-injection suite: seeded schedules of kill -9, freezes, restarts and full-cluster
// restarts against a real 3-server cluster, with clients on the real ClientConnector. Each schedule's
// history is checked for lost, duplicated, phantom and reordered writes, lost or doubled pushes,
// diverged logs and stuck operations. A failure prints its seed; replay it with
// `npm run fault -- --seed S`. Longer runs: `npm run soak -- --minutes N`.
import { expect, it } from "vitest";
import { formatResult, runFaultSchedule } from "./fault/run.js";

const schedules = Number(process.env.CHATPLUS_FAULT_SCHEDULES ?? "10");
const firstSeed = Number(process.env.CHATPLUS_FAULT_FIRST_SEED ?? "1");

for (let seed = firstSeed; seed < firstSeed + schedules; seed += 1) {
  it(`fault schedule seed ${seed}: nothing acknowledged is lost or doubled, and nobody gets stuck`, { timeout: 180_000 }, async () => {
    const result = await runFaultSchedule({ seed });
    console.log(formatResult(result));
    expect(result.violations, formatResult(result)).toEqual([]);
    expect(result.acknowledged).toBeGreaterThan(0);
  });
}

it("the checker can fail: with deduplication planted out of the servers, fault schedules find duplicated writes", { timeout: 600_000 }, async () => {
  // tests/fault/plant.ts patches the servers so retried requests are applied again. A duplicate needs
  // a write that committed but whose answer was lost to a fault, so try seeds until one shows it.
  const summaries: string[] = [];
  for (let seed = 1; seed <= 5; seed += 1) {
    const result = await runFaultSchedule({ seed, plant: "no-dedup" });
    summaries.push(`seed ${seed}: ${result.summary}`);
    if (result.violations.some((violation) => violation.class === "duplicated")) break;
  }
  console.log(`planted no-dedup: ${summaries.join("; ")}`);
  expect(summaries.at(-1)).toMatch(/duplicated/);
});
