// The log alone rebuilds the state: a real server is driven through a varied workload over the protocol
// and stopped with SIGTERM; replaying its log into a fresh Store gives a byte-identical state (same
// stateDigest) and log (same logDigest), and replaying twice gives the same result both times.
// The random part of the workload is seeded; a failure prints the seed (CHATPLUS_REPLAY_SEED replays it).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect } from "vitest";
import Database from "better-sqlite3";
import { Store, replayInto } from "../store/store.js";
import { schemaVersion } from "../store/tables.js";
import { seededRandom } from "../utils.js";
import type { TestClient } from "./helpers/client.js";
import { ChatServer, serverTest, defaultPassword, stateDigestOf, uniqueName } from "./chat-support.js";

const seed = Number(process.env.CHATPLUS_REPLAY_SEED ?? 7_411);
const randomSteps = 150;

let server: ChatServer;
/** `test`, retried only when the server stepped down meanwhile (see serverTest). */
const it = serverTest(() => server);
let scratch: string;
const stores: Store[] = [];

beforeAll(async () => {
  server = await ChatServer.start();
  scratch = mkdtempSync(join(tmpdir(), "chatplus-replay-"));
});
afterAll(async () => {
  for (const store of stores) store.close();
  await server?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

function open(path: string): Store {
  const store = new Store(path);
  stores.push(store);
  return store;
}

type User = { name: string; client: TestClient; token: string; sent: number[] };

let runs = 0;

/** The scripted part: every kind of write, including failures, retries and an account deletion. */
async function scriptedWorkload(): Promise<{ users: User[]; channels: string[]; retriedId: number; fay: string }> {
  runs += 1;
  // Fresh names per run: a run is repeated if the server steps down during it (see serverTest).
  const [a, b] = [`replay-a${runs}`, `replay-b${runs}`];
  const retriedId = 777_000 + runs;
  const users: User[] = [];
  for (const prefix of ["ann", "ben", "cat", "dan", "eve"]) {
    const name = uniqueName(prefix);
    const { client, token } = await server.register(name);
    users.push({ name, client, token, sent: [] });
  }
  const [ann, ben, cat, dan, eve] = users;
  const dm = async (from: User, to: User, body: string) => from.sent.push((await from.client.ok("send_dm", { to: to.name, body })).message.id);
  const post = async (from: User, channel: string, body: string) => from.sent.push((await from.client.ok("post", { channel, body })).message.id);

  await dm(ann, ben, "hi ben");
  await dm(ben, ann, "hi ann");
  await dm(cat, cat, "note to self");
  await post(ann, "general", "hello all");
  await post(dan, "random", "random thought");

  // Eve goes offline, gets DMs queued, comes back, reads them two at a time.
  await eve.client.ok("logout");
  for (let i = 0; i < 5; i += 1) await dm(i % 2 === 0 ? ann : ben, eve, `queued ${i}`);
  eve.client = (await server.login(eve.name)).client;
  for (let page = 0; page < 5; page += 1) if ((await eve.client.ok("read_undelivered", { limit: 2 })).remaining === 0) break;

  await ann.client.ok("create_channel", { channel: a, topic: "first" });
  await ann.client.ok("create_channel", { channel: b });
  for (const user of [ben, cat, dan]) await user.client.ok("join_channel", { channel: a });
  await cat.client.ok("join_channel", { channel: b });
  await post(ben, a, "in a");
  await post(cat, a, "also in a");
  await ann.client.ok("set_topic", { channel: a, topic: "second" });
  await dan.client.ok("leave_channel", { channel: a });
  await ben.client.ok("delete_message", { messageId: ben.sent[ben.sent.length - 1] });
  await ben.client.ok("mark_read", { conversation: `@${ann.name}`, messageId: ann.sent[0] });
  await cat.client.ok("mark_read", { conversation: `#${a}`, messageId: cat.sent[cat.sent.length - 1] });
  await ann.client.ok("delete_channel", { channel: b });

  // Failures never reach the log.
  await eve.client.request("post", { channel: a, body: "not a member" });
  await dan.client.request("set_topic", { channel: a, topic: "not admin" });
  await ann.client.request("create_channel", { channel: a });

  // A retried write (same clientId and id) is one entry.
  const retried = { v: 1, id: retriedId, type: "post", channel: "general", body: "retried" };
  ann.client.sendRaw(`${JSON.stringify(retried)}\n${JSON.stringify(retried)}\n`);
  await ann.client.request("ping");

  // Fay's only DM to ann is still undelivered when ann deletes her account: it goes, and so does
  // fay's conversation with ann (dm_partners must follow the messages table exactly).
  const fay = uniqueName("fay");
  const { client: fayClient } = await server.register(fay);
  await ann.client.ok("logout");
  await fayClient.ok("send_dm", { to: ann.name, body: "you will not read this" });

  // Ann deletes her account: her channel passes to ben, her name is re-registered by someone new.
  const { client: annAgain } = await server.login(ann.name);
  await annAgain.ok("delete_account", { password: defaultPassword });
  const { client: newAnn, token } = await server.register(ann.name);
  users[0] = { name: ann.name, client: newAnn, token, sent: [] };
  await dm(users[0], ben, "I am the new ann");
  return { users, channels: [a, `replay-c${runs}`, `replay-d${runs}`], retriedId, fay };
}

/** The seeded part: random requests among the users; whatever fails, fails without a trace. */
async function randomWorkload(users: User[], ownChannels: string[], random: () => number): Promise<void> {
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)];
  const channels = ["general", "random", ...ownChannels];
  for (let step = 0; step < randomSteps; step += 1) {
    const user = pick(users);
    const other = pick(users);
    const channel = pick(channels);
    const choice = random();
    if (choice < 0.45) {
      const reply = choice < 0.25 ? await user.client.request("send_dm", { to: other.name, body: `dm ${step}` }) : await user.client.request("post", { channel, body: `post ${step}` });
      if (reply.type === "ok") user.sent.push(reply.data!.message.id);
    }    else if (choice < 0.55) await user.client.request("join_channel", { channel });
    else if (choice < 0.6) await user.client.request("leave_channel", { channel });
    else if (choice < 0.65) await user.client.request("create_channel", { channel, topic: `made at ${step}` });
    else if (choice < 0.7) await user.client.request("set_topic", { channel, topic: `topic ${step}` });
    else if (choice < 0.78 && user.sent.length > 0) await user.client.request("delete_message", { messageId: pick(user.sent) });
    else if (choice < 0.88) await user.client.request("mark_read", { conversation: random() < 0.5 ? `#${channel}` : `@${other.name}`, messageId: 1 + Math.floor(random() * 400) });
    else if (choice < 0.94) await user.client.request("read_undelivered", { limit: 1 + Math.floor(random() * 3) });
    else if (choice < 0.97) await user.client.request("delete_channel", { channel });
    else {
      // Log out and back in: a new session, and DMs sent meanwhile are queued.
      await user.client.ok("logout");
      user.client = (await server.login(user.name)).client;
    }
  }
}

describe("the store's durability", () => {
  it("is what SQLite runs with: FULL, or NORMAL where asked, and FULL again after a batch synced later", async () => {
    // Preparing "PRAGMA synchronous = FULL" (for batches synced later) switches the connection to
    // FULL, so a "normal" store once fsynced every commit. Method: ask SQLite on real files.
    const full = open(join(scratch, "durability-full.db"));
    expect(full.db.pragma("synchronous", { simple: true })).toBe(2);
    const normal = new Store(join(scratch, "durability-normal.db"), "normal");
    stores.push(normal);
    expect(normal.db.pragma("synchronous", { simple: true })).toBe(1);
    const config = { index: 1, epoch: 1, clientId: null, requestId: null, command: { op: "config" as const, primary: 1, members: [1] } };
    full.appendEntries([config], { syncLater: true });
    full.syncLogNow();
    expect(full.db.pragma("synchronous", { simple: true }), "FULL again after a batch synced later").toBe(2);
    expect(full.lastIndex).toBe(1);
  });
});

describe("the store's file format", () => {
  it("refuses a data file of another format with an error naming both, and leaves the file as it was", async () => {
    // Format 4 kept the log WITHOUT ROWID; format 5 made it a rowid table (docs/architecture.md §3).
    const path = join(scratch, "format-4.db");
    const old = new Database(path);
    old.exec("CREATE TABLE log (idx INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, kind TEXT NOT NULL, client_id TEXT, request_id INTEGER, body TEXT NOT NULL, response TEXT) WITHOUT ROWID");
    old.pragma("user_version = 4");
    old.close();
    expect(() => new Store(path)).toThrow(new RegExp(`holds data format 4, and this server reads and writes format ${schemaVersion}`));
    const after = new Database(path, { readonly: true });
    expect(after.pragma("user_version", { simple: true })).toBe(4);
    expect((after.prepare("SELECT sql FROM sqlite_master WHERE name = 'log'").get() as { sql: string }).sql).toMatch(/WITHOUT ROWID/);
    after.close();
    // A fresh file gets the current format.
    const fresh = open(join(scratch, "format-fresh.db"));
    expect(fresh.db.pragma("user_version", { simple: true })).toBe(schemaVersion);
  });
});

describe("replaying the log", () => {
  it("rebuilds exactly the state a live server built, and does so deterministically", async () => {
    try {
      const { users, channels, retriedId, fay } = await scriptedWorkload();
      await randomWorkload(users, channels, seededRandom(seed));
      const committed = await server.commitIndex();
      await server.cluster.signal(1, "SIGTERM");

      const original = open(server.dbPath);
      // Everything acknowledged is in the file, and nothing more.
      expect(original.lastIndex).toBe(committed);
      const ops = new Set(original.entries(1, original.lastIndex).map((entry) => entry.command.op));
      for (const op of ["config", "bootstrap", "register", "login", "logout", "delete_account", "send_dm", "read_undelivered", "delete_message", "create_channel", "join_channel", "leave_channel", "set_topic", "delete_channel", "post", "mark_read"]) {
        expect(ops.has(op as never), `the workload wrote a ${op} entry`).toBe(true);
      }
      const retried = original.entries(1, original.lastIndex).filter((entry) => entry.requestId === retriedId);
      expect(retried).toHaveLength(1);
      expect(stateDigestOf(original.db)).toBe(original.stateDigest());
      // dm_partners holds exactly the pairs the messages table links, in both directions.
      const pairs = (sql: string) => original.db.prepare(sql).all().map((row) => JSON.stringify(row));
      const partners = pairs("SELECT user_id AS a, other_id AS b FROM dm_partners ORDER BY a, b");
      expect(partners).toEqual(
        pairs(`SELECT sender_id AS a, recipient_id AS b FROM messages WHERE dm_key IS NOT NULL
               UNION SELECT recipient_id, sender_id FROM messages WHERE dm_key IS NOT NULL ORDER BY a, b`),
      );
      expect(partners.length).toBeGreaterThan(5);
      const fayId = (original.db.prepare("SELECT id FROM users WHERE name = ?").get(fay) as { id: number }).id;
      expect(original.db.prepare("SELECT count(*) AS n FROM dm_partners WHERE user_id = ?").get(fayId)).toEqual({ n: 0 });

      const first = open(join(scratch, `first-${runs}.db`));
      replayInto(first, original.entries(1, original.lastIndex));
      expect(first.lastIndex).toBe(original.lastIndex);
      expect(first.logDigest()).toBe(original.logDigest());
      expect(first.stateDigest()).toBe(original.stateDigest());

      const second = open(join(scratch, `second-${runs}.db`));
      replayInto(second, original.entries(1, original.lastIndex));
      expect(second.stateDigest()).toBe(first.stateDigest());
      expect(second.logDigest()).toBe(first.logDigest());

      // Truncation reverses a suffix through the undo journal: the state and log are exactly what a
      // replay of the kept prefix builds, and the dropped suffix applies again on top. After a reopen
      // the journal is empty, and truncation falls back to the replay, with the same result.
      const all = original.entries(1, original.lastIndex);
      const undone = open(join(scratch, `undone-${runs}.db`));
      replayInto(undone, all);
      for (const keep of [all.length - 1, all.length - 60, Math.floor(all.length / 2), 0]) {
        const reference = open(join(scratch, `prefix-${runs}-${keep}.db`));
        replayInto(reference, all.slice(0, keep));
        expect(undone.truncateAfter(keep), `truncating after ${keep}`).toBe("undo");
        expect(undone.lastIndex).toBe(keep);
        expect(undone.stateDigest(), `state after truncating to ${keep}`).toBe(reference.stateDigest());
        expect(undone.logDigest()).toBe(reference.logDigest());
        replayInto(undone, all.slice(keep));
        expect(undone.stateDigest(), `state after re-applying ${keep + 1}..${all.length}`).toBe(first.stateDigest());
      }
      // The journal is memory only (undo.ts): TEMP tables in a temporary file would be written by every commit.
      expect(undone.db.pragma("temp_store", { simple: true }), "temp_store is MEMORY").toBe(2);
      const undonePath = undone.db.name;
      undone.close();
      const reopened = open(undonePath);
      const keep = all.length - 60;
      expect(reopened.truncateAfter(keep)).toBe("replay");
      const prefix = open(join(scratch, `prefix-${runs}-${keep}-again.db`));
      replayInto(prefix, all.slice(0, keep));
      expect(reopened.stateDigest()).toBe(prefix.stateDigest());
      expect(reopened.logDigest()).toBe(prefix.logDigest());

      // A catch-up logs entries and applies them later (appendEntries with deferApply). Applied
      // later, in any chunks, they give exactly the log and state of entries applied at once; the
      // backlog survives a reopen; truncating logged entries leaves the state alone, and truncating
      // into applied ones with logged ones after them undoes the applied ones.
      const half = Math.floor(all.length / 2);
      const late = open(join(scratch, `late-${runs}.db`));
      replayInto(late, all.slice(0, half));
      late.appendEntries(all.slice(half), { deferApply: true });
      expect([late.lastIndex, late.appliedIndex, late.pendingApply]).toEqual([all.length, half, all.length - half]);
      const halfReference = open(join(scratch, `half-${runs}.db`));
      replayInto(halfReference, all.slice(0, half));
      expect(late.stateDigest(), "logged entries leave the state alone").toBe(halfReference.stateDigest());
      expect(() => late.proposeBatch(99, [{ clientId: null, requestId: null, command: { op: "config", primary: 1, members: [1] } }])).toThrow(/applied before proposing/);
      expect(late.applyPending(10)).toBe(all.length - half - 10);
      expect(late.truncateAfter(half + 5)).toBe("undo");
      const fiveReference = open(join(scratch, `half5-${runs}.db`));
      replayInto(fiveReference, all.slice(0, half + 5));
      expect([late.lastIndex, late.appliedIndex]).toEqual([half + 5, half + 5]);
      expect(late.stateDigest()).toBe(fiveReference.stateDigest());
      expect(late.logDigest()).toBe(fiveReference.logDigest());
      late.appendEntries(all.slice(half + 5), { deferApply: true });
      const latePath = late.db.name;
      late.close();
      const lateAgain = open(latePath);
      expect([lateAgain.lastIndex, lateAgain.appliedIndex]).toEqual([all.length, half + 5]);
      expect(lateAgain.truncateAfter(all.length - 60)).toBe("log");
      expect(lateAgain.stateDigest()).toBe(fiveReference.stateDigest());
      while (lateAgain.applyPending(37) > 0);
      expect([lateAgain.appliedIndex, lateAgain.getMeta("applied_index")]).toEqual([all.length - 60, undefined]);
      expect(lateAgain.stateDigest()).toBe(prefix.stateDigest());
      expect(lateAgain.logDigest(), "responses filled in as the entries are applied").toBe(prefix.logDigest());
      // Once the backlog is applied, entries apply at once again.
      lateAgain.appendEntries(all.slice(all.length - 60));
      expect(lateAgain.pendingApply).toBe(0);
      expect(lateAgain.stateDigest()).toBe(first.stateDigest());
      expect(lateAgain.logDigest()).toBe(first.logDigest());

      // A transaction applies entries only until they have logged a bound of bytes (one turn's work,
      // architecture.md §8.1). With a bound of 2 KB, a primary's batches stop early and the rest are
      // proposed next, in order; a backup's appends apply part and log the rest, and applyPending
      // finishes them in several steps. Both give exactly the log and state of entries applied at once.
      const boundBytes = 2048;
      const bounded = (name: string) => {
        const store = new Store(join(scratch, `${name}-${runs}.db`), "full", boundBytes);
        stores.push(store);
        return store;
      };
      const proposer = bounded("bounded-proposer");
      let proposeCalls = 0;
      for (let from = 0; from < all.length; proposeCalls += 1) {
        let to = from;
        while (to < all.length && all[to].epoch === all[from].epoch && to - from < 100) to += 1;
        const proposals = proposer.proposeBatch(all[from].epoch, all.slice(from, to).map((entry) => ({ clientId: entry.clientId, requestId: entry.requestId, command: entry.command })));
        expect(proposals.length).toBeGreaterThan(0);
        expect(proposals.every((proposal) => proposal.result.ok)).toBe(true);
        from += proposals.length;
      }
      expect(proposeCalls, "the bound split batches").toBeGreaterThan(2 * Math.ceil(all.length / 100));
      expect(proposer.logDigest()).toBe(first.logDigest());
      expect(proposer.stateDigest()).toBe(first.stateDigest());
      const backup = bounded("bounded-backup");
      for (let from = 0; from < all.length; from += 50) backup.appendEntries(all.slice(from, from + 50));
      expect(backup.pendingApply, "entries past the bound were only logged").toBeGreaterThan(0);
      let applyCalls = 1;
      while (backup.applyPending(500) > 0) applyCalls += 1;
      expect(applyCalls, "applyPending stops at the bound too").toBeGreaterThan(2);
      expect(backup.logDigest()).toBe(first.logDigest());
      expect(backup.stateDigest()).toBe(first.stateDigest());
      // A budget of 0 (a peer read that used it up) logs the whole append.
      const spent = bounded("bounded-spent");
      expect(spent.appendEntries(all.slice(0, 10), { applyBytesMax: 0 })).toBe(0);
      expect([spent.lastIndex, spent.appliedIndex]).toEqual([10, 0]);

      // The digest is not blind: one changed row changes it.
      second.db.prepare("UPDATE channels SET topic = topic || '.' WHERE name = 'general'").run();
      expect(second.stateDigest()).not.toBe(first.stateDigest());
    } catch (error) {
      throw new Error(`replay test failed with seed ${seed} (replay with CHATPLUS_REPLAY_SEED=${seed}): ${(error as Error).message}`, { cause: error });
    }
  });
});
