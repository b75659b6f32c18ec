// S7: three servers on three "machines" — network namespaces with their own addresses, joined by a
// bridge in a fourth namespace — replicate and fail over exactly as on loopback.
// Addresses come from 198.18.0.0/24 (RFC 2544's benchmarking range, never routed on the internet).
// Before any server starts, the test checks that the kernel routes every machine address through
// the veth it created, so no packet can leave for a real network. Everything it creates is removed
// in afterAll.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, expect, it } from "vitest";
import { TestCluster } from "./helpers/cluster.js";
import { checkInvariants, describe, RetryingWriter } from "./helpers/writer.js";

const tag = randomBytes(2).toString("hex");
const hub = `cp${tag}hub`;
const namespaces = [1, 2, 3].map((i) => `cp${tag}n${i}`);
const subnet = "198.18.0";
const hostAddress = (i: number) => `${subnet}.${i}`;
const testerAddress = `${subnet}.254`;
const created: string[] = [];
let rootVeth: string | undefined;
let cluster: TestCluster | undefined;

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

beforeAll(() => {
  const existing = execFileSync("ip", ["-4", "addr"], { encoding: "utf8" });
  if (existing.includes(` ${subnet}.`)) throw new Error(`${subnet}.0/24 is already used on this machine; pick another test subnet`);
  ip("netns", "add", hub);
  created.push(hub);
  ip("-n", hub, "link", "add", "br0", "type", "bridge");
  ip("-n", hub, "link", "set", "br0", "up");
  for (const [index, namespace] of namespaces.entries()) {
    ip("netns", "add", namespace);
    created.push(namespace);
    const inside = `cp${tag}a${index + 1}`;
    const outside = `cp${tag}b${index + 1}`;
    ip("link", "add", inside, "netns", namespace, "type", "veth", "peer", "name", outside, "netns", hub);
    ip("-n", namespace, "addr", "add", `${hostAddress(index + 1)}/24`, "dev", inside);
    ip("-n", namespace, "link", "set", inside, "up");
    ip("-n", namespace, "link", "set", "lo", "up");
    ip("-n", hub, "link", "set", outside, "master", "br0");
    ip("-n", hub, "link", "set", outside, "up");
  }
  // The test process (clients, status pings) reaches the machines through one more veth.
  rootVeth = `cp${tag}r`;
  ip("link", "add", rootVeth, "type", "veth", "peer", "name", `cp${tag}rh`, "netns", hub);
  ip("addr", "add", `${testerAddress}/24`, "dev", rootVeth);
  ip("link", "set", rootVeth, "up");
  ip("-n", hub, "link", "set", `cp${tag}rh`, "master", "br0");
  ip("-n", hub, "link", "set", `cp${tag}rh`, "up");
  for (const i of [1, 2, 3]) {
    const route = execFileSync("ip", ["route", "get", hostAddress(i)], { encoding: "utf8" });
    if (!route.includes(`dev ${rootVeth}`)) throw new Error(`refusing to run: ${hostAddress(i)} routes via ${route.trim()}, not the test veth`);
  }
});

afterAll(async () => {
  await cluster?.destroy();
  if (rootVeth) {
    try {
      ip("link", "del", rootVeth);
    } catch {
      // removed with its peer's namespace
    }
  }
  for (const namespace of created.reverse()) {
    try {
      ip("netns", "del", namespace);
    } catch {
      // already gone
    }
  }
});

it("S7: servers in three network namespaces replicate and fail over as on loopback", async () => {
  // Goal: nothing depends on loopback. Method: each server runs under `ip netns exec` with its own
  // address; writers post through the bridge; the primary is killed; the rest is checked as in S1.
  cluster = await TestCluster.create({
    servers: 3,
    hosts: [1, 2, 3].map(hostAddress),
    wrap: (id) => ["ip", "netns", "exec", namespaces[id - 1]],
  });
  const c = cluster;
  await c.startAll();
  const first = await c.waitForPrimary();
  const ws = [new RetryingWriter(c, "s7w0"), new RetryingWriter(c, "s7w1")];
  for (const w of ws) w.start();
  try {
    await waitAcked(ws, 40);
    await c.kill(first);
    expect(await c.waitForPrimary(10000)).not.toBe(first);
    await waitAcked(ws, 80);
  } finally {
    await Promise.all(ws.map((w) => w.stop()));
  }
  await c.start(first);
  await c.waitForInSync([1, 2, 3]);
  const report = await checkInvariants(c, ws, [1, 2, 3]);
  console.log(`S7 (hosts ${[1, 2, 3].map(hostAddress).join(", ")}) ${describe(report)}`);
});

async function waitAcked(ws: RetryingWriter[], total: number): Promise<void> {
  const deadline = Date.now() + 20000;
  while (ws.reduce((sum, w) => sum + w.acked.length, 0) < total) {
    if (Date.now() > deadline) throw new Error(`only ${ws.reduce((sum, w) => sum + w.acked.length, 0)} writes acknowledged`);
    await new Promise((done) => setTimeout(done, 20));
  }
}
