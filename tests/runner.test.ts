// The runner as a person uses it: start the cluster, watch the status table (printed by itself only
// when it changes), `kill` the primary, `restart` it, `quit`. Ports come from a generated config
// (free ports), data goes to a temp dir.
import { execa } from "execa";
import { existsSync } from "node:fs";
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

type Row = { state: string; role: string; epoch: string; inSync: string };

/** Every status table printed so far, oldest first: id -> row. */
function tables(output: string): Map<number, Row>[] {
  return output
    .split(/^id\s+pid\s+state.*$/m)
    .slice(1)
    .map((table) => {
      const rows = new Map<number, Row>();
      for (const line of table.split("\n")) {
        const cells = line.trim().split(/\s+/);
        if (cells.length >= 9 && /^\d+$/.test(cells[0])) rows.set(Number(cells[0]), { state: cells[2], role: cells[3], epoch: cells[4], inSync: cells[6] });
      }
      return rows;
    });
}

/** Rows of the most recent status table printed so far. */
function latestTable(output: string): Map<number, Row> {
  return tables(output).at(-1) ?? new Map();
}

it("the runner reprints the table only on changes, shows a failover after `kill` and the catch-up after `restart`, and `quit` stops everything", { timeout: 120_000 }, async () => {
  cluster = await TestCluster.create({ servers: 3, spareServers: 2 });
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

  // Goal: the runner prints the table by itself only when something in it changes (state, role,
  // epoch, in-sync), never the same table again. Method: without typing `status`, wait for the
  // table of a settled cluster, watch a few more polls, and compare each printed table with the one
  // before it. Spare machines 4 and 5 are announced, not started, and get no log file.
  const deadline = Date.now() + 30_000;
  const settled = () => [...latestTable(output).values()].filter((row) => row.inSync === "yes").length === 3 && primaryOf() !== undefined;
  while (!settled()) {
    if (Date.now() > deadline) throw new Error(`the runner never printed a settled table by itself; output:\n${output.slice(-3000)}`);
    await sleep(200);
  }
  await sleep(3500); // a few of the runner's 1 s polls; a reprint without a change would show up here
  const shapes = tables(output).map((table) => JSON.stringify([...table]));
  for (let i = 1; i < shapes.length; i += 1) expect(shapes[i], `table ${i} is a reprint of table ${i - 1}; output:\n${output}`).not.toBe(shapes[i - 1]);
  expect([...latestTable(output).keys()]).toEqual([1, 2, 3]);
  expect(output).toMatch(/spare machines for 'add', in the config but not started: 4 \(port \d+\), 5 \(port \d+\)/);
  expect(existsSync(join(cluster.dir, "runner", "server-1.log"))).toBe(true);
  expect(existsSync(join(cluster.dir, "runner", "server-4.log"))).toBe(false);

  await waitFor("a primary", () => primaryOf() !== undefined);
  const first = primaryOf()!;
  command(`kill ${first}`);
  await waitFor("a new primary", () => primaryOf() !== undefined && primaryOf() !== first);
  expect(latestTable(output).get(first)).toMatchObject({ state: "down", inSync: "no" });
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
