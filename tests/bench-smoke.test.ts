// The benchmark still runs end to end. It never asserts speed: a shared 2-core CI machine says
// nothing about Chat+'s performance, only whether the bench works.
import { execa } from "execa";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { repoRoot } from "./helpers/cluster.js";

const outDir = mkdtempSync(join(tmpdir(), "chatplus-bench-smoke-"));

afterAll(() => {
  rmSync(outDir, { recursive: true, force: true });
});

function bench(args: string[], timeout: number) {
  return execa(process.execPath, ["--import", "tsx", join(repoRoot, "bench", "bench.ts"), ...args], { cwd: repoRoot, reject: false, timeout });
}

describe("benchmark smoke run", () => {
  it("--help prints the usage to stdout and exits 0", async () => {
    const result = await bench(["--help"], 30_000);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("Usage: npm run bench");
  });

  it("--quick measures c=1 and c=16 on a real cluster and on the bare pipeline and writes a report with a results table and a chart", { timeout: 150_000 }, async () => {
    // Goal: the whole pipeline works: cluster start, registration, closed-loop load, /proc sampling,
    // machine limits, the bare pipeline, report and chart. Method: run --quick into a temp file and look at its shape.
    const out = join(outDir, "performance.md");
    const result = await bench(["--quick", "--out", out], 140_000);
    expect(result.exitCode, result.stderr).toBe(0);
    const report = readFileSync(out, "utf8");
    expect(report).toContain("| clients | writes/s | p50 ms | p99 ms | p99.9 ms |");
    expect(report).toMatch(/^\| 1 \| [\d,]+ \|/m);
    expect(report).toMatch(/^\| 16 \| [\d,]+ \|/m);
    expect(report).toContain("## Targets");
    // The disk table: each server wrote something for every acknowledged write (its WAL at least).
    const diskTable = report.slice(report.indexOf("| clients | server 1 KB written per write |"));
    expect(diskTable).toMatch(/^\| 16 \| [\d.]+ \| [\d.]+ \| [\d.]+ \|/m);
    // The bare pipeline ran the same levels on its own three processes, with every write answered.
    const bareTable = report.slice(report.indexOf("| clients | bare writes/s |"));
    expect(report).toContain("## The bare pipeline");
    expect(bareTable).toMatch(/^\| 1 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d,]+ \| \d+% \|.* \| 0 \|$/m);
    expect(bareTable).toMatch(/^\| 16 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d,]+ \| \d+% \|.* \| 0 \|$/m);
    expect(report).toMatch(/\| c=16: ≥ 10,000 writes\/s \|.*\| the bare pipeline: [\d,]+\/s \|/);
    expect(report).toContain("loopback TCP round trip");
    expect(report).toContain('<img src="performance.svg"');
    expect(existsSync(join(outDir, "performance.svg"))).toBe(true);
    expect(readFileSync(join(outDir, "performance.svg"), "utf8")).toContain("<svg");
    // Progress went to stderr, the verdicts to stdout.
    expect(result.stderr).toContain("level c=16");
    expect(result.stdout).toMatch(/c=16: ≥ 10,000 writes\/s/);
  });
});
