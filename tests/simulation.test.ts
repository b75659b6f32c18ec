// Deterministic simulation of the replication core (core/replica.ts), in the style of FoundationDB's
// and TigerBeetle's simulators. See docs/simulation.md.
//
// Goal: show that the core keeps its promises -- no acknowledged write lost, none applied twice,
// logs that agree, epochs that never go down, one acknowledging primary per epoch, and recovery once
// the faults stop -- under thousands of seeded fault schedules, and that the checker would notice if
// it did not (planted bugs).
// Method: tests/sim runs three to five Replicas in one process over a fake network, fake storage and a
// fake clock, with kill -9, restarts, freezes, full-cluster restarts and connection drops drawn from
// the seed; simulated clients write through whichever server says it is primary; the checker judges
// every event and the end state. A failing seed prints its seed, its failure classes and the tail of
// its trace; `npm run sim -- --seed S --mode M --verbose` replays it exactly.
import { describe, expect, it } from "vitest";
import { formatFailure, runSeed, violationKinds, type NetworkMode, type SimResult, type ViolationKind } from "./sim/harness.js";
import { plantedBugs } from "./sim/planted.js";

type Batch = { mode: NetworkMode; start: number; seeds: number; ignore: ViolationKind[]; note: string };

// 5,000 seeds within the fault model, most of them over TCP-like links.
const batches: Batch[] = [
  { mode: "tcp", start: 1, seeds: 3000, ignore: [], note: "TCP-like links; connections close only when a process dies" },
  { mode: "tcp-drops", start: 1_000_001, seeds: 1200, ignore: [], note: "TCP-like links that also drop (both sides see the link go down)" },
  // The core resends only after three heartbeats without progress (TCP never loses data on a live
  // link), so under constant silent loss it may not converge within the bound; safety must still hold.
  { mode: "lossy", start: 2_000_001, seeds: 800, ignore: ["liveness", "stuck"], note: "messages dropped, duplicated and reordered; safety only" },
];

function runBatch(batch: Batch): { results: SimResult[]; failing: SimResult[]; seconds: number } {
  const began = performance.now();
  const results: SimResult[] = [];
  for (let seed = batch.start; seed < batch.start + batch.seeds; seed += 1) results.push(runSeed({ seed, mode: batch.mode, tailLines: 40 }));
  const failing = results.filter((result) => result.violations.some((violation) => !batch.ignore.includes(violation.kind)));
  return { results, failing, seconds: (performance.now() - began) / 1000 };
}

function summary(batch: Batch, results: SimResult[], failing: SimResult[], seconds: number): string {
  const counts = violationKinds.map((kind) => `${kind} ${results.filter((result) => result.violations.some((violation) => violation.kind === kind)).length}`);
  return `${batch.mode} (${batch.note}): ${results.length} seeds in ${seconds.toFixed(1)}s (${(results.length / seconds).toFixed(0)}/s), failing ${failing.length}; by class: ${counts.join(", ")}`;
}

describe("the simulation is deterministic", () => {
  it("a seed run twice produces the same trace, byte for byte", () => {
    // Goal: any failure can be replayed from its seed. Method: run seeds of every mode twice and
    // compare the SHA-256 of their whole event traces.
    for (const mode of ["tcp", "tcp-drops", "lossy", "partition"] as const) {
      for (let seed = 1; seed <= 5; seed += 1) {
        const first = runSeed({ seed, mode });
        const second = runSeed({ seed, mode });
        expect(second.traceHash, `seed ${seed} mode ${mode}`).toBe(first.traceHash);
        expect(second.steps).toBe(first.steps);
      }
    }
  });

  it("different seeds produce different runs", () => {
    const hashes = new Set<string>();
    for (let seed = 1; seed <= 20; seed += 1) hashes.add(runSeed({ seed, mode: "tcp" }).traceHash);
    expect(hashes.size).toBe(20);
  });
});

describe("the core keeps every invariant under seeded faults", () => {
  for (const batch of batches) {
    it(`${batch.seeds} seeds, ${batch.mode}: nothing acknowledged is lost, duplicated or reordered, and the cluster recovers`, () => {
      const { results, failing, seconds } = runBatch(batch);
      console.log(summary(batch, results, failing, seconds));
      const report = failing.slice(0, 3).map((result) => formatFailure(result, 30)).join("\n\n");
      expect(
        failing.map((result) => `${result.seed}:${[...new Set(result.violations.map((violation) => violation.kind))].join("+")}`),
        `failing seeds (first three in full):\n${report}`,
      ).toEqual([]);
    }, 300_000);
  }

  it("300 seeds with partitions (outside the fault model): no epoch ever goes down", () => {
    // Goal: even when links are cut, which the safety argument does not cover, a server's epoch never
    // decreases and the core never throws. Everything else seen there is printed as an observation.
    const batch: Batch = { mode: "partition", start: 3_000_001, seeds: 300, ignore: [], note: "cut links; only epoch and crash count" };
    const { results, failing, seconds } = runBatch(batch);
    const observed = new Map<string, number>();
    for (const result of results) for (const kind of new Set(result.observations.map((observation) => observation.kind))) observed.set(kind, (observed.get(kind) ?? 0) + 1);
    console.log(`${summary(batch, results, failing, seconds)}; observations (not failures): ${[...observed].map(([kind, count]) => `${kind} ${count}`).join(", ") || "none"}`);
    expect(failing.map((result) => `${result.seed}:${result.violations.map((violation) => violation.kind).join("+")}`), failing.slice(0, 2).map((result) => formatFailure(result, 30)).join("\n\n")).toEqual([]);
  }, 120_000);
});

describe("the checker catches planted bugs", () => {
  // Goal: a checker that never fails proves nothing. Method: plant one bug at a time (patched onto
  // each Replica instance, or in the simulated shell) and look for a seed on which the unmodified
  // system passes and the planted one fails with one of the expected classes.
  for (const bug of plantedBugs) {
    it(`${bug.name}: ${bug.description}`, () => {
      const seedsMax = 3000;
      let caught: { seed: number; kinds: ViolationKind[] } | null = null;
      for (let seed = 1; seed <= seedsMax && caught === null; seed += 1) {
        const planted = runSeed({ seed, mode: bug.mode, decorate: bug.decorate, shellBugs: bug.shellBugs, timing: bug.timing });
        if (!planted.violations.some((violation) => bug.expect.includes(violation.kind))) continue;
        const baseline = runSeed({ seed, mode: bug.mode });
        if (baseline.violations.length > 0) continue;
        caught = { seed, kinds: [...new Set(planted.violations.map((violation) => violation.kind))] };
      }
      console.log(`planted ${bug.name}: ${caught ? `caught at seed ${caught.seed} (${bug.mode}) as ${caught.kinds.join(", ")}` : `not caught in ${seedsMax} seeds`}`);
      expect(caught, `${bug.name} should be caught as ${bug.expect.join(" or ")} on a seed the real system passes`).not.toBeNull();
    }, 120_000);
  }
});
