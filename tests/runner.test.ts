// The runner as a person uses it: start the cluster, `kill` the primary, `restart` it, read the
// status table, `quit`. Ports come from a generated config (free ports), data goes to a temp dir.
import { execa } from "execa";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { canConnect, repoRoot, TestCluster, sleep } from "./helpers/cluster.js";

let cluster: TestCluster | undefined;
let runner: ReturnType<typeof execa> | undefined;
afterAll(async () => {
  if (runner?.pid && runner.exitCode === null) {
    runner.kill("SIGINT");
    await runner.catch(() => {});
  }
  await cluster?.destroy();
});

/** Rows of the most recent status table printed so far: id -> { role, inSync }. */
function latestTable(output: string): Map<number, { state: string; role: string; inSync: string }> {
  const tables = output.split(/^id\s+pid\s+state.*$/m);
  const rows = new Map<number, { state: string; role: string; inSync: string }>();
  for (const line of (tables.at(-1) ?? "").split("\n")) {
    const cells = line.trim().split(/\s+/);
    if (cells.length >= 9 && /^\d+$/.test(cells[0])) rows.set(Number(cells[0]), { state: cells[2], role: cells[3], inSync: cells[6] });
  }
  return rows;
}

it("the runner shows a failover after `kill` and the catch-up after `restart`, and `quit` stops everything", { timeout: 120_000 }, async () => {
  cluster = await TestCluster.create({ servers: 3 });
  let output = "";
  runner = execa(process.execPath, ["--import", "tsx", join(repoRoot, "runner.ts"), "--config", cluster.configPath, "--data", join(cluster.dir, "runner")], {
    cwd: repoRoot,
    stdin: "pipe",
    reject: false,
  });
  runner.stdout!.on("data", (data: Buffer) => (output += data.toString()));
  const command = (line: string) => runner!.stdin!.write(`${line}\n`);
  const waitFor = async (what: string, predicate: () => boolean, timeoutMs = 30000) => {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (Date.now() > deadline) throw new Error(`runner never showed ${what}; output:\n${output.slice(-3000)}`);
      command("status");
      await sleep(500);
    }
  };
  const primaryOf = () => [...latestTable(output)].find(([, row]) => row.role === "primary")?.[0];

  await waitFor("a primary", () => primaryOf() !== undefined);
  const first = primaryOf()!;
  command(`kill ${first}`);
  await waitFor("a new primary", () => primaryOf() !== undefined && primaryOf() !== first);
  expect(latestTable(output).get(first)?.state).toBe("down");
  command(`restart ${first}`);
  await waitFor(`server ${first} back in sync`, () => {
    const row = latestTable(output).get(first);
    return row?.role === "backup" && row.inSync === "yes";
  });
  command("quit");
  const result = await runner;
  expect(result.exitCode).toBe(0);
  expect(output).toContain("all servers stopped");
  for (const machine of cluster.config.machines) expect(await canConnect(machine.host, machine.clientPort)).toBe(false);
});
