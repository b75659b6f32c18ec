// One client must not be able to take the server down, stall it, grow its memory without bound, or
// hide another user's messages. Each test drives a real single-server cluster over real sockets:
// a connection that closes during its login, a client that stops reading its answers or its
// pushes, pipelined session changes, and lengths of characters outside the BMP.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, expect } from "vitest";
import { connectionInflightMax, connectionOutputMaxBytes, messageLengthMax } from "../connections/consts.js";
import type { TestClient } from "./helpers/client.js";
import { ChatServer, defaultPassword, newClientId, serverTest, uniqueChannel, uniqueName, waitUntil } from "./chat-support.js";

let server: ChatServer;

beforeAll(async () => {
  server = await ChatServer.start();
});
afterAll(async () => {
  await server?.stop();
});

const test = serverTest(() => server);

function rssBytes(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((row) => row.startsWith("VmRSS:"));
  return Number(line!.split(/\s+/)[1]) * 1024;
}

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

function sessionsOf(username: string): number {
  return server.readDb((db) => (db.prepare("SELECT count(*) AS n FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.name = ?").get(username) as { n: number }).n);
}

async function isOnline(asker: TestClient, username: string): Promise<boolean> {
  const { users } = await asker.ok("list_users", { pattern: username });
  return (users as { username: string; online: boolean }[]).find((user) => user.username === username)?.online === true;
}

/** Sends `requests` with at most `depth` unanswered at a time; resolves when all are answered ok. */
async function pipeline(client: TestClient, requests: { type: string; fields: Record<string, unknown> }[], depth = 64): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const { type, fields } = requests[next++];
      const reply = await client.request(type, fields, 30000);
      if (reply.type !== "ok") throw new Error(`${type}: ${reply.code} ${reply.message}`);
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
}

test("a connection that closes while its login is checked leaves its user offline, so DMs to them wait in their queue", async () => {
  const bob = uniqueName("bob");
  (await server.register(bob)).client.close();
  const { client: alice } = await server.register(uniqueName("alice"));
  await waitUntil("bob offline after closing", async () => !(await isOnline(alice, bob)));

  // The login is sent and the connection gone at once, while the server still runs scrypt.
  const quitter = await server.hello();
  quitter.sendRaw(`{"v":1,"id":1,"type":"login","username":"${bob}","password":"${defaultPassword}"}\n`);
  quitter.socket.end();
  await waitUntil("the login committed its session", () => sessionsOf(bob) === 2);
  // A round trip after the commit: the server has finished that login's work by the time it answers.
  await alice.ok("ping");

  expect(await isOnline(alice, bob)).toBe(false);
  const sent = await alice.ok("send_dm", { to: bob, body: "are you there?" });
  const { client: bobAgain } = await server.login(bob);
  const { messages } = await bobAgain.ok("read_undelivered", { limit: 10 });
  expect(messages.map((message: { id: number }) => message.id)).toContain(sent.message.id);
});

test("a client that stops reading is no longer read; it gets every answer once it reads again, and the server's memory stays bounded", async () => {
  const owner = uniqueName("reader");
  const { client } = await server.register(owner);
  const channel = uniqueChannel("big");
  await client.ok("create_channel", { channel });
  // 20 posts of 4,000 characters: each history answer below is ~80 KB.
  const body = "x".repeat(messageLengthMax);
  await pipeline(client, Array.from({ length: 20 }, () => ({ type: "post", fields: { channel, body } })), 8);

  const { client: greedy } = await server.login(owner);
  const pid = server.pid!;
  const rssBefore = rssBytes(pid);
  greedy.socket.pause();
  // Below connectionInflightMax: the server holds all of them unanswered while the client does not read.
  const requests = 1000;
  const firstId = 10_000;
  let frames = "";
  for (let id = firstId; id < firstId + requests; id += 1) frames += `{"v":1,"id":${id},"type":"history","conversation":"#${channel}","limit":500}\n`;
  greedy.sendRaw(frames);
  // Unread, those answers would be 80 MB in the server's memory.
  const growthMax = 64 * 1024 * 1024;
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && rssBytes(pid) - rssBefore < growthMax) await sleep(50);
  expect(rssBytes(pid) - rssBefore).toBeLessThan(growthMax);
  // Meanwhile the server answers everyone else.
  expect((await client.ok("ping")).role).toBe("primary");

  greedy.socket.resume();
  const answered = () => greedy.frames.filter((frame) => frame.type === "ok" && frame.id! >= firstId);
  await waitUntil("every history request answered", () => answered().length === requests, 60000);
  const ids = answered().map((frame) => frame.id);
  expect(new Set(ids).size).toBe(requests);
  expect(Math.min(...(ids as number[]))).toBe(firstId);
  expect(greedy.closed).toBe(false);
  expect(requests).toBeLessThan(connectionInflightMax);
}, 90000);

test("a client that never reads its pushes is disconnected once they pass connectionOutputMaxBytes, and is offline after", async () => {
  const channel = uniqueChannel("flood");
  const { client: poster } = await server.register(uniqueName("poster"));
  await poster.ok("create_channel", { channel });
  const sleeper = uniqueName("sleeper");
  const { client: idle } = await server.register(sleeper);
  await idle.ok("join_channel", { channel });
  idle.socket.pause();

  // A control character is six bytes in JSON: each push is ~24 KB, so these are ~1.2x the bound.
  const body = "\u0001".repeat(messageLengthMax);
  const posts = Math.ceil((1.2 * connectionOutputMaxBytes) / (6 * messageLengthMax));
  await pipeline(poster, Array.from({ length: posts }, () => ({ type: "post", fields: { channel, body } })));

  idle.socket.resume();
  await waitUntil("the idle connection closed by the server", () => idle.closed, 30000);
  expect(idle.events.length).toBeLessThan(posts);
  expect(server.cluster.readLog(1)).toContain("client does not read its output");
  expect(await isOnline(poster, sleeper)).toBe(false);
}, 90000);

test("two registers pipelined on one connection make one account; the second answers CHAT_ERR_ALREADY_LOGGED_IN", async () => {
  const client = await server.hello(newClientId());
  const first = uniqueName("twin");
  const second = uniqueName("twin");
  const [a, b] = await Promise.all([client.request("register", { username: first, password: defaultPassword }), client.request("register", { username: second, password: defaultPassword })]);
  expect(a).toMatchObject({ type: "ok" });
  expect(b).toMatchObject({ type: "error", code: "CHAT_ERR_ALREADY_LOGGED_IN" });
  const names = server.readDb((db) => (db.prepare("SELECT name FROM users WHERE name IN (?, ?)").all(first, second) as { name: string }[]).map((row) => row.name));
  expect(names).toEqual([first]);
});

// zod counts code points for min and max; this keeps it so (docs/protocol.md promises characters).
test("lengths count characters (code points), not UTF-16 units: 4,000 emoji are a message, 4,001 are not; 8 emoji are a password", async () => {
  const emoji = "\u{1F600}";
  const name = uniqueName("emoji");
  const client = await server.hello();
  await client.ok("register", { username: name, password: emoji.repeat(8) });
  expect(await client.errorCode("send_dm", { to: name, body: emoji.repeat(messageLengthMax + 1) })).toBe("CHAT_ERR_BAD_REQUEST");
  const sent = await client.ok("send_dm", { to: name, body: emoji.repeat(messageLengthMax) });
  expect([...sent.message.body].length).toBe(messageLengthMax);
  // Four emoji are eight UTF-16 units but four characters: too short for a password.
  expect(await (await server.hello()).errorCode("register", { username: uniqueName("short"), password: emoji.repeat(4) })).toBe("CHAT_ERR_BAD_REQUEST");
});
