// Replication scenarios S1–S6 from the replication issue, on real server processes, real TCP and
// real SQLite files. After each: every acknowledged write is present exactly once on every
// caught-up server, unknown writes at most once, and logs and state are identical (by hash).
import { afterEach, describe as suite, expect, it } from "vitest";
import { join } from "node:path";
import { heartbeatIntervalMs, unreachableGraceMs } from "../connections/consts.js";
import { waitUntil } from "./chat-support.js";
import { TestCluster, openReadOnly, sleep } from "./helpers/cluster.js";
import { checkInvariants, describe, RetryingWriter } from "./helpers/writer.js";

/** Three servers with a planted slow disk (tests/fault/plant.ts), started. */
async function slowDiskCluster(plant: "slow-sync" | "slow-log-sync", slowMs: number): Promise<TestCluster> {
  const planted = await TestCluster.create({
    servers: 3,
    nodeArgs: ["--import", new URL("./fault/plant.ts", import.meta.url).pathname],
    env: { ...process.env, CHATPLUS_PLANT: plant, CHATPLUS_SLOW_SYNC_MS: String(slowMs) } as Record<string, string>,
  });
  try {
    await planted.startAll();
  } catch (error) {
    await planted.destroy();
    throw error;
  }
  return planted;
}

let cluster: TestCluster | undefined;

afterEach(async () => {
  await cluster?.destroy();
  cluster = undefined;
});

async function startCluster(servers = 3, spareServers = 0): Promise<TestCluster> {
  cluster = await TestCluster.create({ servers, spareServers });
  await cluster.startAll();
  await cluster.waitForPrimary();
  return cluster;
}

function writers(c: TestCluster, count: number, prefix: string): RetryingWriter[] {
  return Array.from({ length: count }, (_, i) => new RetryingWriter(c, `${prefix}${i}`));
}

async function runWhile(ws: RetryingWriter[], body: () => Promise<void>): Promise<void> {
  for (const w of ws) w.start();
  try {
    await body();
  } finally {
    await Promise.all(ws.map((w) => w.stop()));
  }
}

/** Waits until at least `n` more writes are acknowledged in total. */
async function progress(ws: RetryingWriter[], n: number, timeoutMs = 20000): Promise<void> {
  const start = ws.reduce((sum, w) => sum + w.acked.length, 0);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (ws.reduce((sum, w) => sum + w.acked.length, 0) >= start + n) return;
    await sleep(20);
  }
  throw new Error(`writers made no progress (${n} writes) within ${timeoutMs} ms`);
}

suite("replication scenarios", () => {
  it("S1: the next server takes over when the primary is killed, and nothing acknowledged is lost or doubled", async () => {
    // Goal: kill -9 of the primary under load loses nothing. Method: 3 writers post continuously,
    // the primary is killed, the writers continue on the new primary, then the old one restarts and converges.
    const c = await startCluster();
    const ws = writers(c, 3, "s1w");
    const first = await c.waitForPrimary();
    await runWhile(ws, async () => {
      await progress(ws, 60);
      await c.kill(first);
      const next = await c.waitForPrimary(10000);
      expect(next).not.toBe(first);
      await progress(ws, 60);
    });
    await c.start(first);
    await c.waitForInSync([1, 2, 3]);
    const report = await checkInvariants(c, ws, [1, 2, 3]);
    console.log(`S1 ${describe(report)}`);
    expect(report.acked).toBeGreaterThanOrEqual(120);
  });

  it.each([
    ["the primary and then the new primary", "primary-primary"],
    ["a backup and then the primary", "backup-primary"],
  ])("S2: the last server serves alone after %s die, and the others catch up and rejoin", async (_label, order) => {
    // Goal: two failures in either order leave one server serving. Method: kill two servers one
    // after the other under load; write on the survivor; restart both; all three converge.
    const c = await startCluster();
    const ws = writers(c, 2, `s2${order === "backup-primary" ? "b" : "p"}w`);
    const killed: number[] = [];
    await runWhile(ws, async () => {
      await progress(ws, 30);
      const primary = await c.waitForPrimary();
      const victim = order === "primary-primary" ? primary : [1, 2, 3].find((id) => id !== primary)!;
      await c.kill(victim);
      killed.push(victim);
      await progress(ws, 30);
      const second = await c.waitForPrimary(10000);
      await c.kill(second);
      killed.push(second);
      const survivor = [1, 2, 3].find((id) => !killed.includes(id))!;
      expect(await c.waitForPrimary(10000)).toBe(survivor);
      await progress(ws, 30);
    });
    const survivor = [1, 2, 3].find((id) => !killed.includes(id))!;
    expect(c.membersFromLog(survivor)).toEqual([survivor]);
    for (const id of killed) await c.start(id);
    await c.waitForInSync([1, 2, 3]);
    const report = await checkInvariants(c, ws, [1, 2, 3]);
    console.log(`S2 (${order}) ${describe(report)}`);
  });

  it("S3: a restarted server catches up while writes continue, and can then take over", async () => {
    // Goal: catch-up under load produces a server fit to lead. Method: kill the primary, restart it
    // while writers run, wait until it is back in the in-sync set, then kill both other servers:
    // the caught-up one must take over alone, with everything.
    const c = await startCluster();
    const ws = writers(c, 2, "s3w");
    const first = await c.waitForPrimary();
    const others = [1, 2, 3].filter((id) => id !== first);
    await runWhile(ws, async () => {
      await progress(ws, 40);
      await c.kill(first);
      await progress(ws, 60);
      await c.start(first);
      await c.waitForInSync([1, 2, 3]);
      await progress(ws, 30);
      for (const id of others) await c.kill(id);
      expect(await c.waitForPrimary(10000, [first])).toBe(first);
      await progress(ws, 30);
    });
    for (const id of others) await c.start(id);
    await c.waitForInSync([1, 2, 3]);
    const report = await checkInvariants(c, ws, [1, 2, 3]);
    console.log(`S3 ${describe(report)}`);
  });

  it("S3b: a server back in the in-sync set with logged entries still to apply takes over from a killed primary: it applies them before it proposes", async () => {
    // Goal: a catch-up logs entries first and applies them afterwards (docs/architecture.md §7.1),
    // so a takeover in between must finish applying before its config entry. Method: kill a backup,
    // post a backlog of 50,000 messages, restart it, and kill -9 the primary as soon as the
    // restarted server is eligible again, while it still applies. It must take over,
    // serve, and hold every acknowledged post exactly once, as must the other backup.
    const c = await startCluster();
    const primary = await c.waitForPrimary();
    // The first backup in consts order: it is the one that takes over from the primary.
    const down = [1, 2, 3].find((id) => id !== primary)!;
    await c.kill(down);
    await waitUntil(`primary ${primary} to drop server ${down} from the in-sync set`, async () => !(await c.status(primary))?.members.includes(down), 10000);
    const backlog = 50_000;
    const writer = new RetryingWriter(c, "s3bwriter");
    await writer.writePipelined(backlog, 250);
    await writer.stop();
    expect(writer.acked.length, "every post of the backlog is acknowledged").toBe(backlog);
    const acked = new Set(writer.acked.map((record) => record.messageId));
    const current = await c.waitForPrimary();
    expect(current, "the primary did not move while the backlog was written (a stall of one server would move it)").toBe(primary);
    await c.start(down);
    // It is the primary's successor once it is eligible (it holds a config listing itself and knows
    // that entry is committed) and the other backup has heard so from its heartbeats; before that,
    // the other backup takes over instead.
    let listedAt: number | undefined;
    await waitUntil(`server ${down} to hold a committed config listing itself`, async () => {
      const status = await c.status(down);
      if (!status?.members.includes(down) || status.role !== "backup") return false;
      listedAt ??= status.lastIndex;
      return status.commitIndex >= listedAt;
    }, 20000);
    await sleep(5 * heartbeatIntervalMs);
    const seen = (await c.status(down))!;
    await c.kill(primary);
    expect(seen.appliedIndex, `server ${down} still had logged entries to apply when the primary died (raise the backlog if this fails)`).toBeLessThan(seen.lastIndex);
    expect(await c.waitForPrimary(20000), `server ${down}, eligible and first in consts order, takes over`).toBe(down);
    expect(c.readLog(down)).toContain("proposal waits for the logged entries to be applied");
    const reader = await c.client(down);
    await reader.ok("register", { username: "s3breader", password: "password123" });
    reader.close();
    const db = openReadOnly(join(c.dataDir(down), "chat.db"));
    try {
      const rows = db.prepare("SELECT id FROM messages WHERE body LIKE 's3bwriter:%'").all() as { id: number }[];
      expect(rows.length).toBe(backlog);
      expect(new Set(rows.map((row) => row.id))).toEqual(acked);
    } finally {
      db.close();
    }
    await c.start(primary);
    await c.waitForInSync([1, 2, 3]);
    const report = await checkInvariants(c, [], [1, 2, 3]);
    console.log(`S3b ${describe(report)}`);
  });

  it("S5b: a cluster frozen as a whole (one stalled disk) elects again as soon as every server has reported, not after the unreachable grace", async () => {
    // Goal: when every server detects a freeze at once, each treats itself as restarted; with every
    // server reachable and reporting, the restart path has nothing to wait for. Method: writers run,
    // all three servers are SIGSTOPped together for 400 ms and continued; the new primary must take
    // over less than unreachableGraceMs after it noticed its freeze (the old wait was the whole grace),
    // and nothing acknowledged is lost or doubled.
    const c = await startCluster();
    const ws = writers(c, 2, "s5bw");
    await runWhile(ws, async () => {
      await progress(ws, 30);
      const pids = [1, 2, 3].map((id) => c.pid(id)!);
      for (const pid of pids) process.kill(pid, "SIGSTOP");
      await sleep(400);
      for (const pid of pids) process.kill(pid, "SIGCONT");
      await progress(ws, 30);
    });
    const primary = await c.waitForPrimary();
    const lines = c.readLog(primary).split("\n").filter((line) => line.startsWith("{")).map((line) => JSON.parse(line) as { time: number; msg: string; reason?: string; role?: string });
    const frozenAt = lines.filter((line) => line.msg === "event loop was frozen; treating this server as restarted").map((line) => line.time);
    expect(frozenAt.length, `server ${primary} noticed the freeze`).toBeGreaterThan(0);
    const tookOver = lines.find((line) => line.msg === "role change" && line.role === "primary" && line.time > frozenAt[frozenAt.length - 1]);
    expect(tookOver, `server ${primary} took over after its last freeze`).toBeDefined();
    expect(tookOver!.time - frozenAt[frozenAt.length - 1]).toBeLessThan(unreachableGraceMs);
    await c.waitForInSync([1, 2, 3]);
    const report = await checkInvariants(c, ws, [1, 2, 3]);
    console.log(`S5b ${describe(report)}; took over ${tookOver!.time - frozenAt[frozenAt.length - 1]} ms after noticing the freeze`);
  });

  for (const stop of ["SIGTERM", "SIGKILL"] as const) {
    it(`S4: after a full stop (${stop}), restarting in every order loses nothing and a stale server waits`, async () => {
      // Goal: full-cluster restarts in all six orders. Method: make server 3 stale (kill it and keep
      // writing), stop everything, then start the servers one by one in each order. While some
      // member of the newest in-sync set is missing, nobody may serve.
      const c = await startCluster();
      const ws = writers(c, 2, `s4${stop === "SIGTERM" ? "t" : "k"}w`);
      await ws[0].write(20);
      await c.kill(3);
      await ws[1].write(20);
      const orders = [[3, 2, 1], [3, 1, 2], [2, 3, 1], [1, 2, 3], [2, 1, 3], [1, 3, 2]];
      for (const [round, order] of orders.entries()) {
        // Stop all three at once; whichever config the last one to go wrote is the newest.
        await Promise.all([1, 2, 3].filter((id) => c.isRunning(id)).map((id) => c.signal(id, stop)));
        const configs = [1, 2, 3].map((id) => c.latestConfig(id));
        const newest = configs.reduce((best, config) => (config.epoch > best.epoch ? config : best)).members;
        for (const [position, id] of order.entries()) {
          await c.start(id);
          const running = order.slice(0, position + 1);
          if (!newest.every((member) => running.includes(member))) {
            await sleep(600);
            for (const runningId of running) {
              expect((await c.status(runningId))?.role, `server ${runningId} must not serve before all of ${newest} are up (round ${round}, order ${order})`).not.toBe("primary");
            }
          }
        }
        await c.waitForInSync([1, 2, 3]);
        await ws[round % 2].write(5);
      }
      const report = await checkInvariants(c, ws, [1, 2, 3]);
      console.log(`S4 (${stop}) ${describe(report)}`);
      expect(report.acked).toBe(70);
    });
  }

  it("S5: a frozen primary acknowledges nothing after the takeover, serves no stale read, and rejoins", async () => {
    // Goal: SIGSTOP of the primary until a failover, then SIGCONT. Method: a probe connection to
    // the old primary sends a post and a history read while it is frozen; after it resumes, neither
    // may be answered with success. The old primary must rejoin as a backup and converge.
    const c = await startCluster();
    const ws = writers(c, 2, "s5w");
    const old = await c.waitForPrimary();
    const probe = await c.client(old);
    await probe.ok("hello", { clientId: "s5-probe-client" });
    await probe.ok("register", { username: "s5probe", password: "password123" });
    await runWhile(ws, async () => {
      await progress(ws, 40);
      await c.signal(old, "SIGSTOP");
      const next = await c.waitForPrimary(10000, [1, 2, 3].filter((id) => id !== old));
      await progress(ws, 30);
      const staleWrite = probe.request("post", { channel: "general", body: "s5-written-to-frozen-primary" }, 4000).catch(() => undefined);
      const staleRead = probe.request("history", { conversation: "#general", limit: 5 }, 4000).catch(() => undefined);
      await sleep(100);
      await c.signal(old, "SIGCONT");
      for (const reply of [await staleWrite, await staleRead]) {
        expect(reply === undefined || reply.type === "error", `old primary answered ${JSON.stringify(reply)}`).toBe(true);
      }
      expect(next).not.toBe(old);
      await progress(ws, 30);
    });
    await c.waitForInSync([1, 2, 3]);
    // It rejoined through a newer primary (under heavy load it may later lead again, legitimately).
    expect(c.readLog(old)).toMatch(/"reason":"joined epoch ([2-9]|\d\d+)"/);
    const report = await checkInvariants(c, ws, [1, 2, 3]);
    const snapshotBodies = (await import("./helpers/writer.js")).snapshot(c, old).bodies;
    expect(snapshotBodies.get("s5-written-to-frozen-primary") ?? 0).toBe(0);
    console.log(`S5 ${describe(report)}`);
  });

  it("S5c: a batch fsynced off the event loop is acknowledged only after that sync, and a role change finishes the syncs still running", async () => {
    // Goal: the primary's off-loop fsync (docs/architecture.md §5) holds its acknowledgements back,
    // and a primary frozen while such a sync runs finishes it before it acts on the freeze.
    // Method: every server loads a plant that makes each off-loop sync 1.5 s slow (a slow disk).
    // 16 posts sent in one write form one batch: each is acknowledged no sooner than 1.5 s after it
    // was sent. Then the primary is frozen 100 ms into such a batch's sync, until another server
    // leads, and resumed: it must log that it finished the sync, answer none of those posts, and rejoin.
    const slowMs = 1500;
    const c = (cluster = await slowDiskCluster("slow-sync", slowMs));
    const old = await c.waitForPrimary();
    const client = await c.client(old);
    await client.ok("hello", { clientId: "s7-burst-client" });
    await client.ok("register", { username: "s7writer", password: "password123" });
    const burst = (tag: string, timeoutMs: number) => {
      const sentAt = performance.now();
      client.socket.cork();
      const replies = Array.from({ length: 16 }, (_, i) =>
        client.request("post", { channel: "general", body: `${tag} ${i}` }, timeoutMs).then(
          (frame) => ({ ok: frame.type === "ok", ms: performance.now() - sentAt }),
          () => undefined,
        ),
      );
      client.socket.uncork();
      return Promise.all(replies);
    };
    for (const reply of await burst("s7-first", 10000)) {
      expect(reply?.ok).toBe(true);
      expect(reply!.ms).toBeGreaterThanOrEqual(slowMs);
    }

    const second = burst("s7-second", 8000);
    await sleep(100);
    await c.signal(old, "SIGSTOP");
    const next = await c.waitForPrimary(10000, [1, 2, 3].filter((id) => id !== old));
    await c.signal(old, "SIGCONT");
    for (const reply of await second) expect(reply?.ok ?? false, "the frozen primary answered a post").toBe(false);
    expect(next).not.toBe(old);
    await waitUntil("the resumed primary finished its pending sync", () => /finished the log syncs still running before a role change/.test(c.readLog(old)), 5000);
    await c.waitForInSync([1, 2, 3]);
  });

  it("S5d: a backup sends nothing about the appends of one peer read before their one fsync", async () => {
    // Goal: a backup logs the appends that arrive in one socket read without an fsync each, and
    // holds its acks (and every other message) until one fsync at the end of the read
    // (docs/architecture.md §5). Method: every server loads a plant that makes that fsync 120 ms
    // slower (a slow disk; below freezeDetectMs, so nobody is declared frozen). Every acknowledged
    // write sent while the backups are idle must then take at least that long: an ack sent before
    // the sync would let the primary answer at once. The posts are still all there afterwards, on every server.
    const slowMs = 120;
    const c = (cluster = await slowDiskCluster("slow-log-sync", slowMs));
    const primary = await c.waitForPrimary();
    await c.waitForInSync([1, 2, 3]);
    const client = await c.client(primary);
    await client.ok("hello", { clientId: "s5d-client" });
    await client.ok("register", { username: "s5dwriter", password: "password123" });
    for (let i = 0; i < 5; i += 1) {
      // Let the previous write's slow sync end first, or it alone would delay this one.
      await sleep(2 * slowMs);
      const sentAt = performance.now();
      await client.ok("post", { channel: "general", body: `s5d ${i}` });
      expect(performance.now() - sentAt, `post ${i} was acknowledged before the backups' slow sync`).toBeGreaterThanOrEqual(slowMs);
    }
    const history = await client.ok("history", { conversation: "#general", limit: 10 });
    expect((history.messages as { body: string }[]).map((message) => message.body)).toEqual([0, 1, 2, 3, 4].map((i) => `s5d ${i}`));
    await c.waitForInSync([1, 2, 3]);
  });

  it("S6: a 4th server added to a loaded cluster catches up, joins, and counts toward fault tolerance", async () => {
    // Goal: live membership growth. Method: writers run while server 4 (in the config, not an
    // initial member) starts; once it is in the in-sync set, kill two of the original three.
    const c = await startCluster(3, 1);
    const ws = writers(c, 2, "s6w");
    await runWhile(ws, async () => {
      await progress(ws, 60);
      await c.start(4);
      await c.waitForInSync([1, 2, 3, 4]);
      await progress(ws, 30);
      const primary = await c.waitForPrimary();
      await c.kill(primary);
      const other = [1, 2, 3].find((id) => id !== primary)!;
      await c.kill(other);
      await c.waitForPrimary(10000);
      await progress(ws, 30);
    });
    const survivors = [1, 2, 3, 4].filter((id) => c.isRunning(id));
    expect(survivors).toContain(4);
    const report = await checkInvariants(c, ws, survivors);
    console.log(`S6 ${describe(report)}`);
  });
});
