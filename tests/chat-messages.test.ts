// Direct messages, read markers, exactly-once retries and resuming with events_since, against one
// real server process over TCP with a real SQLite file.
import { afterAll, beforeAll, describe, expect } from "vitest";
import { messageLengthMax, undeliveredPageCharsMax, unreadCountMax } from "../connections/consts.js";
import type { TestClient, Frame } from "./helpers/client.js";
import { ChatServer, serverTest, errorOf, framesWithId, historyIds, newClientId, sendFrame, uniqueChannel, uniqueName, waitForPush, waitUntil } from "./chat-support.js";

let server: ChatServer;
/** `test`, retried only when the server stepped down meanwhile (see serverTest). */
const it = serverTest(() => server);
beforeAll(async () => {
  server = await ChatServer.start();
});
afterAll(async () => {
  await server?.stop();
});

type Message = { id: number; conversation: string; from: string; to?: string; body: string; ts: number };

async function sendDm(client: TestClient, to: string, body: string): Promise<Message> {
  return (await client.ok("send_dm", { to, body })).message as Message;
}

/** Registers a user and closes the connection, so the user is offline. */
async function offlineUser(prefix: string): Promise<string> {
  const username = uniqueName(prefix);
  const { client } = await server.register(username);
  await client.ok("logout");
  client.close();
  return username;
}

type UnreadEntry = { conversation: string; unread: number; lastMessageId: number };
function unreadOf(summary: Record<string, any>, conversation: string): UnreadEntry | undefined {
  return (summary.conversations as UnreadEntry[]).find((entry) => entry.conversation === conversation);
}

describe("direct messages", () => {
  it("a DM to an unknown user answers CHAT_ERR_UNKNOWN_USER, a malformed one CHAT_ERR_BAD_REQUEST, and neither changes anything", async () => {
    const { client } = await server.register(uniqueName("dmerr"));
    const other = uniqueName("dmok");
    await server.register(other);
    const before = server.snapshot();
    expect(await errorOf(client, "send_dm", { to: uniqueName("ghost"), body: "hello?" })).toBe("CHAT_ERR_UNKNOWN_USER");
    for (const fields of [
      { to: "bad name", body: "x" },
      { to: other, body: "" },
      { to: other, body: "   \n\t " },
      { to: other, body: "x".repeat(4001) },
      { to: other },
      { body: "x" },
      { to: other, body: 42 },
    ]) {
      expect(await errorOf(client, "send_dm", fields), JSON.stringify(fields).slice(0, 80)).toBe("CHAT_ERR_BAD_REQUEST");
    }
    expect(server.snapshot()).toEqual(before);
    const longest = await sendDm(client, other, "y".repeat(4000));
    expect(longest.body.length).toBe(4000);
  });

  it("an online recipient gets the DM pushed at once, named after the sender in its conversation", async () => {
    const alice = uniqueName("pushA");
    const bob = uniqueName("pushB");
    const { client: a } = await server.register(alice);
    const { client: b } = await server.register(bob);
    const message = await sendDm(a, bob, "ping!");
    expect(message).toMatchObject({ conversation: `@${bob}`, from: alice, to: bob, body: "ping!" });
    const pushed = await waitForPush(b, { kind: "message", message: { id: message.id } });
    expect(pushed.seq).toBe(message.id);
    expect(pushed.event.message).toEqual({ ...message, conversation: `@${alice}` });
    // The sender's own sessions see it too, named after the recipient.
    const echoed = await waitForPush(a, { kind: "message", message: { id: message.id } });
    expect(echoed.event.message).toEqual(message);
    // Pushed at once means delivered: nothing is queued for bob.
    expect((await b.ok("read_undelivered")).messages).toEqual([]);
  });

  it("an offline recipient gets DMs queued: read_undelivered hands them out N at a time with `remaining`, never twice", async () => {
    const bob = await offlineUser("queueB");
    const alice = uniqueName("queueA");
    const { client: a } = await server.register(alice);
    const sent: Message[] = [];
    for (let i = 1; i <= 5; i += 1) sent.push(await sendDm(a, bob, `queued ${i}`));

    const { client: b, data: login } = await server.login(bob);
    expect(login.unread.undelivered).toBe(5);
    expect(unreadOf(login.unread, `@${alice}`)).toEqual({ conversation: `@${alice}`, unread: 5, lastMessageId: sent[4].id });
    expect(b.events).toEqual([]);

    const { client: b2 } = await server.login(bob);
    const received: Message[] = [];
    const pages: number[] = [];
    for (const [reader, limit] of [[b, 2], [b2, 2], [b, 2], [b2, 2]] as const) {
      const page = await reader.ok("read_undelivered", { limit });
      received.push(...page.messages);
      pages.push(page.remaining);
    }
    expect(pages).toEqual([3, 1, 0, 0]);
    expect(received.map((message) => message.id)).toEqual(sent.map((message) => message.id));
    expect(received.map((message) => message.body)).toEqual(["queued 1", "queued 2", "queued 3", "queued 4", "queued 5"]);
    for (const message of received) expect(message).toMatchObject({ conversation: `@${alice}`, from: alice, to: bob });
    expect((await b.ok("unread")).undelivered).toBe(0);
    // Delivered is not read: the unread count is unchanged until mark_read.
    expect(unreadOf(await b.ok("unread"), `@${alice}`)?.unread).toBe(5);
  });

  it("a read_undelivered page stops before its bodies pass undeliveredPageCharsMax characters, whatever its limit; the rest come next", async () => {
    const bob = await offlineUser("longB");
    const { client: a } = await server.register(uniqueName("longA"));
    const perPage = Math.floor(undeliveredPageCharsMax / messageLengthMax);
    const total = perPage + 5;
    const body = (i: number) => `${i}:`.padEnd(messageLengthMax, "x");
    await Promise.all(Array.from({ length: total }, (_, i) => a.ok("send_dm", { to: bob, body: body(i) })));
    const { client: b } = await server.login(bob);
    const first = await b.ok("read_undelivered", { limit: 500 });
    expect(first.messages.length).toBe(perPage);
    expect(first.remaining).toBe(5);
    const second = await b.ok("read_undelivered", { limit: 500 });
    expect(second.messages.length).toBe(5);
    expect(second.remaining).toBe(0);
    const bodies = [...first.messages, ...second.messages].map((message: Message) => message.body);
    expect(new Set(bodies)).toEqual(new Set(Array.from({ length: total }, (_, i) => body(i))));
  });

  it("history pages backwards with before and forwards with after, identically for both sides", async () => {
    const alice = uniqueName("histA");
    const bob = uniqueName("histB");
    const { client: a } = await server.register(alice);
    const { client: b } = await server.register(bob);
    const ids: number[] = [];
    for (let i = 0; i < 7; i += 1) ids.push((await sendDm(i % 2 === 0 ? a : b, i % 2 === 0 ? bob : alice, `m${i}`)).id);

    const latest = await a.ok("history", { conversation: `@${bob}`, limit: 3 });
    expect(latest.messages.map((message: Message) => message.id)).toEqual(ids.slice(4));
    const middle = await a.ok("history", { conversation: `@${bob}`, limit: 3, before: ids[4] });
    expect(middle.messages.map((message: Message) => message.id)).toEqual(ids.slice(1, 4));
    const oldest = await a.ok("history", { conversation: `@${bob}`, limit: 3, before: ids[1] });
    expect(oldest.messages.map((message: Message) => message.id)).toEqual(ids.slice(0, 1));

    const first = await b.ok("history", { conversation: `@${alice}`, limit: 3, after: 0 });
    expect(first.messages.map((message: Message) => message.id)).toEqual(ids.slice(0, 3));
    const next = await b.ok("history", { conversation: `@${alice}`, limit: 3, after: ids[2] });
    expect(next.messages.map((message: Message) => message.id)).toEqual(ids.slice(3, 6));
    expect((await b.ok("history", { conversation: `@${alice}`, after: ids[6] })).messages).toEqual([]);

    const fromA = (await a.ok("history", { conversation: `@${bob}` })).messages as Message[];
    const fromB = (await b.ok("history", { conversation: `@${alice.toUpperCase()}` })).messages as Message[];
    expect(fromA.map((message) => message.conversation)).toEqual(ids.map(() => `@${bob}`));
    expect(fromB.map((message) => message.conversation)).toEqual(ids.map(() => `@${alice}`));
    expect(fromB.map(({ conversation: _c, ...rest }) => rest)).toEqual(fromA.map(({ conversation: _c, ...rest }) => rest));
    expect(fromA.map((message) => message.body)).toEqual(["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);

    expect(await errorOf(a, "history", { conversation: `@${uniqueName("ghost")}` })).toBe("CHAT_ERR_UNKNOWN_USER");
    for (const fields of [{ conversation: bob }, { conversation: "@" }, { conversation: "@bad name" }, { conversation: `@${bob}`, limit: 0 }, { conversation: `@${bob}`, before: 0 }]) {
      expect(await errorOf(a, "history", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    }
  });

  it("a sender deletes their own DM: it leaves both histories and both sides get message_deleted; others' and unknown messages are refused", async () => {
    const alice = uniqueName("delA");
    const bob = uniqueName("delB");
    const { client: a } = await server.register(alice);
    const { client: b } = await server.register(bob);
    const keep = await sendDm(a, bob, "keep me");
    const gone = await sendDm(a, bob, "delete me");
    const theirs = await sendDm(b, alice, "bob's own");

    const before = server.snapshot();
    expect(await errorOf(b, "delete_message", { messageId: gone.id })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "delete_message", { messageId: theirs.id })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "delete_message", { messageId: 999_999_999 })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
    expect(await errorOf(a, "delete_message", { messageId: 0 })).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);

    expect(await a.ok("delete_message", { messageId: gone.id })).toEqual({ messageId: gone.id });
    const toBob = await waitForPush(b, { kind: "message_deleted", messageId: gone.id });
    const toAlice = await waitForPush(a, { kind: "message_deleted", messageId: gone.id });
    expect(toBob.event).toEqual({ kind: "message_deleted", conversation: `@${alice}`, messageId: gone.id });
    expect(toAlice.event).toEqual({ kind: "message_deleted", conversation: `@${bob}`, messageId: gone.id });
    expect(toBob.seq).toBeGreaterThan(theirs.id);

    expect(await historyIds(a, `@${bob}`)).toEqual([keep.id, theirs.id]);
    expect(await historyIds(b, `@${alice}`)).toEqual([keep.id, theirs.id]);
    expect(await errorOf(a, "delete_message", { messageId: gone.id })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
    // A deleted message is no longer unread either.
    expect(unreadOf(await b.ok("unread"), `@${alice}`)).toEqual({ conversation: `@${alice}`, unread: 1, lastMessageId: keep.id });
  });
});

describe("read markers", () => {
  it("mark_read only moves forward, and two sessions of one user agree on unread counts, also after reconnecting", async () => {
    const alice = uniqueName("readA");
    const bob = uniqueName("readB");
    const { client: a } = await server.register(alice);
    const { client: b1 } = await server.register(bob);
    const { client: b2 } = await server.login(bob);
    const channel = uniqueChannel("readc");
    await a.ok("create_channel", { channel });
    await b1.ok("join_channel", { channel });
    const dms: number[] = [];
    for (let i = 0; i < 5; i += 1) dms.push((await sendDm(a, bob, `dm ${i}`)).id);
    const posts: number[] = [];
    for (let i = 0; i < 3; i += 1) posts.push(((await a.ok("post", { channel, body: `post ${i}` })).message as Message).id);
    // Bob's own messages never count as unread for him.
    await b2.ok("post", { channel, body: "my own" });
    await sendDm(b2, alice, "my own dm");

    const counts = async (client: TestClient) => {
      const summary = await client.ok("unread");
      return [unreadOf(summary, `@${alice}`)?.unread, unreadOf(summary, `#${channel}`)?.unread];
    };
    expect(await counts(b1)).toEqual([5, 3]);

    expect(await b1.ok("mark_read", { conversation: `@${alice}`, messageId: dms[2] })).toEqual({ conversation: `@${alice}`, messageId: dms[2] });
    expect(await b2.ok("mark_read", { conversation: `#${channel}`, messageId: posts[0] })).toEqual({ conversation: `#${channel}`, messageId: posts[0] });
    expect(await counts(b1)).toEqual([2, 2]);
    expect(await counts(b2)).toEqual([2, 2]);

    // An older marker from the other session does not move it back.
    expect(await b2.ok("mark_read", { conversation: `@${alice}`, messageId: dms[0] })).toEqual({ conversation: `@${alice}`, messageId: dms[2] });
    expect(await counts(b1)).toEqual([2, 2]);
    expect(await counts(b2)).toEqual([2, 2]);

    b1.close();
    b2.close();
    const { client: b3, data } = await server.login(bob);
    expect([unreadOf(data.unread, `@${alice}`)?.unread, unreadOf(data.unread, `#${channel}`)?.unread]).toEqual([2, 2]);
    await b3.ok("mark_read", { conversation: `@${alice}`, messageId: dms[4] });
    await b3.ok("mark_read", { conversation: `#${channel}`, messageId: posts[2] });
    expect(await counts(b3)).toEqual([0, 0]);
    // The sender's view is separate: alice has one unread DM (bob's) and one unread post.
    const aliceView = await a.ok("unread");
    expect([unreadOf(aliceView, `@${bob}`)?.unread, unreadOf(aliceView, `#${channel}`)?.unread]).toEqual([1, 1]);
  });

  it("unread counts stop at unreadCountMax; lastMessageId still names the newest unread message", async () => {
    const alice = uniqueName("capA");
    const bob = uniqueName("capB");
    const { client: a } = await server.register(alice);
    const { client: b } = await server.register(bob);
    const channel = uniqueChannel("capc");
    await a.ok("create_channel", { channel });
    await b.ok("join_channel", { channel });
    const ids: number[] = [];
    // Pipelined in slices: each post is its own request, answered in order of commit.
    for (let start = 0; start < unreadCountMax + 5; start += 250) {
      const slice = Array.from({ length: Math.min(250, unreadCountMax + 5 - start) }, (_, i) => a.ok("post", { channel, body: `p${start + i}` }));
      for (const data of await Promise.all(slice)) ids.push((data.message as Message).id);
    }
    await sendDm(a, bob, "one dm");
    const summary = await b.ok("unread");
    expect(unreadOf(summary, `#${channel}`)).toEqual({ conversation: `#${channel}`, unread: unreadCountMax, lastMessageId: Math.max(...ids) });
    expect(unreadOf(summary, `@${alice}`)?.unread).toBe(1);
    // Below the cap the count is exact again.
    ids.sort((x, y) => x - y);
    await b.ok("mark_read", { conversation: `#${channel}`, messageId: ids[ids.length - 4] });
    expect(unreadOf(await b.ok("unread"), `#${channel}`)).toEqual({ conversation: `#${channel}`, unread: 3, lastMessageId: ids[ids.length - 1] });
  });

  it("mark_read on something that is not the user's conversation is refused with its code and changes nothing", async () => {
    const { client } = await server.register(uniqueName("markerr"));
    const ownerName = uniqueName("markown");
    const { client: owner } = await server.register(ownerName);
    const closed = uniqueChannel("markc");
    await owner.ok("create_channel", { channel: closed });
    const before = server.snapshot();
    expect(await errorOf(client, "mark_read", { conversation: `#${uniqueChannel("nochan")}`, messageId: 1 })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(await errorOf(client, "mark_read", { conversation: `#${closed}`, messageId: 1 })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(await errorOf(client, "mark_read", { conversation: `@${uniqueName("ghost")}`, messageId: 1 })).toBe("CHAT_ERR_UNKNOWN_USER");
    // The message must belong to the conversation.
    const elsewhere = ((await owner.ok("post", { channel: closed, body: "not in general" })).message as Message).id;
    const afterPost = server.snapshot();
    expect(await errorOf(client, "mark_read", { conversation: "#general", messageId: elsewhere })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
    expect(await errorOf(client, "mark_read", { conversation: "#general", messageId: 999_999_999 })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
    expect(await errorOf(owner, "mark_read", { conversation: `@${ownerName}`, messageId: elsewhere })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
    expect(server.snapshot()).toEqual(afterPost);
    const beforeBad = server.snapshot();
    for (const fields of [
      { conversation: "general", messageId: 1 },
      { conversation: "#Bad!", messageId: 1 },
      { conversation: "#general", messageId: 0 },
      { conversation: "#general", messageId: "1" },
      { conversation: "#general" },
    ]) {
      expect(await errorOf(client, "mark_read", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    }
    expect(server.snapshot()).toEqual(beforeBad);
  });
});

describe("exactly-once retries (clientId + request id)", () => {
  it("a post sent twice with the same clientId and id, concurrently and again later, gets one identical response and is applied once", async () => {
    const { client } = await server.register(uniqueName("dupPost"));
    const channel = uniqueChannel("dupc");
    await client.ok("create_channel", { channel });
    const frame = { v: 1, id: 1_000_001, type: "post", channel, body: "only once" };
    client.sendRaw(`${JSON.stringify(frame)}\n${JSON.stringify(frame)}\n`);
    await waitUntil("two responses", () => framesWithId(client, frame.id).length === 2);
    const [first, second] = framesWithId(client, frame.id);
    expect(first.type).toBe("ok");
    expect(second).toEqual(first);
    sendFrame(client, frame);
    await waitUntil("third response", () => framesWithId(client, frame.id).length === 3);
    expect(framesWithId(client, frame.id)[2]).toEqual(first);
    expect(await historyIds(client, `#${channel}`)).toEqual([first.data!.message.id]);
    // A new id is a new post.
    sendFrame(client, { ...frame, id: 1_000_002 });
    await waitUntil("new post", () => framesWithId(client, 1_000_002).length === 1);
    expect((await historyIds(client, `#${channel}`)).length).toBe(2);
  });

  it("a send_dm retried on a new connection with the same clientId returns the original response and is applied once", async () => {
    const alice = uniqueName("dupDmA");
    const bob = uniqueName("dupDmB");
    const clientId = newClientId();
    const first = await server.hello(clientId);
    const registered = await first.ok("register", { username: alice, password: "password123" });
    await server.register(bob);
    const original = await first.request("send_dm", { to: bob, body: "exactly once" }, 10000, 77);
    expect(original.type).toBe("ok");
    first.close();

    const retry = await server.hello(clientId);
    await retry.ok("auth", { token: registered.token });
    const again = await retry.request("send_dm", { to: bob, body: "exactly once" }, 10000, 77);
    expect(again).toEqual(original);
    // Byte for byte, key order included: the log stores the body once, in the command.
    expect(JSON.stringify(again.data)).toBe(JSON.stringify(original.data));
    expect(await historyIds(retry, `@${bob}`)).toEqual([original.data!.message.id]);
  });

  it("a register retried with the same clientId and id, on the same or a new connection, returns the same session and creates one account", async () => {
    const username = uniqueName("dupReg");
    const clientId = newClientId();
    const first = await server.hello(clientId);
    const original = await first.request("register", { username, password: "password123" }, 10000, 5);
    expect(original.type).toBe("ok");
    const sameConnection = await first.request("register", { username, password: "password123" }, 10000, 5);
    expect(sameConnection).toEqual(original);
    const second = await server.hello(clientId);
    const newConnection = await second.request("register", { username, password: "password123" }, 10000, 5);
    expect(newConnection).toEqual(original);
    await second.ok("unread");
    expect(server.readDb((db) => (db.prepare("SELECT count(*) AS n FROM users WHERE name_key = ?").get(username.toLowerCase()) as { n: number }).n)).toBe(1);
    // A different id with the same name is a new request, and the name is taken.
    const third = await server.hello(clientId);
    expect((await third.request("register", { username, password: "password123" }, 10000, 6)).code).toBe("CHAT_ERR_NAME_TAKEN");
  });

  it("a request id reused by the same client for a different request, or by another user's session, is refused with CHAT_ERR_BAD_REQUEST", async () => {
    // Goal: deduplication answers only a true retry. Method: after a post with (clientId, id), send a
    // different request type with that pair, and the same post from another user sharing the clientId.
    const clientId = newClientId();
    const alice = uniqueName("reuseA");
    const bob = uniqueName("reuseB");
    const first = await server.hello(clientId);
    await first.ok("register", { username: alice, password: "password123" });
    await server.register(bob);
    const channel = uniqueChannel("reuse");
    await first.ok("create_channel", { channel });
    const original = await first.request("post", { channel, body: "original" }, 10000, 31);
    expect(original.type).toBe("ok");
    const other = await server.hello(clientId);
    // (An id this client has not used yet: its first connection's ids 1..4 are taken.)
    expect((await other.request("login", { username: bob, password: "password123" }, 10000, 900)).type).toBe("ok");
    const before = server.snapshot();
    expect((await first.request("send_dm", { to: bob, body: "different request" }, 10000, 31)).code).toBe("CHAT_ERR_BAD_REQUEST");
    expect((await other.request("post", { channel: "general", body: "original" }, 10000, 31)).code).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);
    expect(await historyIds(first, `#${channel}`)).toEqual([original.data!.message.id]);
  });

  it("the same request id from a different clientId, or with no clientId at all, is a new request", async () => {
    const username = uniqueName("ids");
    const { token } = await server.register(username);
    const channel = uniqueChannel("idsc");
    const { client: one } = await server.auth(token);
    const { client: two } = await server.auth(token);
    await one.ok("create_channel", { channel });
    const frame = { v: 1, id: 4242, type: "post", channel, body: "same id" };
    sendFrame(one, frame);
    sendFrame(two, frame);
    await waitUntil("both answered", () => framesWithId(one, 4242).length === 1 && framesWithId(two, 4242).length === 1);
    const ids = [framesWithId(one, 4242)[0].data!.message.id, framesWithId(two, 4242)[0].data!.message.id];
    expect(ids[0]).not.toBe(ids[1]);
    // Without hello there is no client id, so nothing is deduplicated.
    const anonymous = await server.connect();
    await anonymous.ok("auth", { token });
    sendFrame(anonymous, frame);
    sendFrame(anonymous, frame);
    await waitUntil("both answered", () => framesWithId(anonymous, 4242).length === 2);
    expect(await historyIds(one, `#${channel}`)).toHaveLength(4);
  });
});

describe("events_since", () => {
  /** Sorts a page's events into a canonical order within each seq (the order inside one seq is not specified). */
  function canonical(events: { seq: number; event: unknown }[]): { seq: number; event: unknown }[] {
    return [...events].sort((x, y) => x.seq - y.seq || JSON.stringify(sortKeys(x.event)).localeCompare(JSON.stringify(sortKeys(y.event))));
  }
  function sortKeys(value: unknown): unknown {
    if (Array.isArray(value)) return value.map(sortKeys);
    if (value === null || typeof value !== "object") return value;
    return Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)).map(([key, inner]) => [key, sortKeys(inner)]));
  }

  it("a client that reconnects gets exactly the events it missed, in seq order, paged with `more`", async () => {
    // Goal: events_since(afterSeq) replays what pushes would have delivered. Method: the user keeps a
    // second session online as a witness recording every push, while the first disconnects; a varied
    // workload runs; the first resumes with small pages and must get the witness's events after afterSeq.
    const me = uniqueName("resume");
    const bob = uniqueName("resB");
    const carol = uniqueName("resC");
    const dave = uniqueName("resD");
    const { client: witness, token } = await server.register(me);
    const { client: b } = await server.register(bob);
    const { client: c } = await server.register(carol);
    const { client: d } = await server.register(dave);
    const shared = uniqueChannel("resx");
    await b.ok("create_channel", { channel: shared, topic: "start" });
    await witness.ok("join_channel", { channel: shared });
    await c.ok("join_channel", { channel: shared });

    const { client: resumer, data: resumed } = await server.auth(token);
    await sendDm(b, me, "before the disconnect");
    await waitUntil("resumer saw the DM", () => resumer.events.length > 0);
    const afterSeq = Math.max(resumed.seq as number, ...resumer.events.map((frame) => frame.seq!));
    resumer.close();

    // The workload the resumer misses.
    const one = await sendDm(b, me, "one");
    await sendDm(witness, bob, "two");
    const p1 = (await b.ok("post", { channel: shared, body: "p1" })).message as Message;
    await c.ok("post", { channel: shared, body: "p2" });
    await b.ok("set_topic", { channel: shared, topic: "changed" });
    await c.ok("leave_channel", { channel: shared });
    await c.ok("join_channel", { channel: shared });
    await b.ok("delete_message", { messageId: p1.id });
    await b.ok("delete_message", { messageId: one.id });
    await sendDm(b, dave, "not for me");
    await d.ok("post", { channel: "random", body: "in a default channel" });
    await b.ok("leave_channel", { channel: shared }); // bob was admin: member_left and admin_changed at one seq
    const y = uniqueChannel("resy");
    const z = uniqueChannel("resz");
    await c.ok("create_channel", { channel: y });
    await c.ok("create_channel", { channel: z });
    await witness.ok("join_channel", { channel: y });
    await witness.ok("join_channel", { channel: z });
    await c.ok("post", { channel: y, body: "in y" });
    // Carol leaves five channels at once: seven events for me share one seq.
    await c.ok("delete_account", { password: "password123" });
    await witness.ok("delete_channel", { channel: z });
    const last = await sendDm(b, me, "three");
    await waitForPush(witness, { kind: "message", message: { id: last.id } });

    const back = await server.hello();
    await back.ok("auth", { token });
    const replayed: { seq: number; event: any }[] = [];
    let cursor = afterSeq;
    let upTo = 0;
    let pages = 0;
    for (;;) {
      const page = await back.ok("events_since", { afterSeq: cursor, limit: 2 });
      pages += 1;
      expect(pages).toBeLessThan(100);
      const seqs = page.events.map((event: { seq: number }) => event.seq);
      expect(seqs).toEqual([...seqs].sort((x: number, y: number) => x - y));
      for (const seq of seqs) expect(seq).toBeGreaterThan(cursor);
      replayed.push(...page.events);
      upTo = page.upTo;
      if (!page.more) break;
      expect(page.events.length).toBeGreaterThan(0);
      cursor = seqs[seqs.length - 1];
    }
    expect(upTo).toBeGreaterThanOrEqual(last.id);
    expect(pages).toBeGreaterThan(5);

    const witnessed = witness.events.filter((frame) => frame.seq! > afterSeq && frame.seq! <= upTo).map((frame: Frame) => ({ seq: frame.seq!, event: frame.event }));
    // A message deleted before the client resumed is not replayed; its message_deleted is.
    const deletedIds = new Set(witnessed.filter((entry) => entry.event.kind === "message_deleted").map((entry) => entry.event.messageId as number));
    const expected = witnessed.filter((entry) => !(entry.event.kind === "message" && deletedIds.has(entry.event.message.id)));
    expect(deletedIds).toEqual(new Set([one.id, p1.id]));
    expect(replayed.map((entry) => entry.seq)).toEqual(expected.map((entry) => entry.seq));
    expect(canonical(replayed)).toEqual(canonical(expected));
    const carolLeft = replayed.filter((entry) => entry.event.kind === "member_left" && entry.event.user === carol);
    const deletionSeq = carolLeft[carolLeft.length - 1].seq;
    const atDeletion = replayed.filter((entry) => entry.seq === deletionSeq).map((entry) => `${entry.event.kind} ${entry.event.channel}`);
    expect(atDeletion.sort()).toEqual(
      [`admin_changed ${y}`, `admin_changed ${z}`, "member_left general", "member_left random", `member_left ${shared}`, `member_left ${y}`, `member_left ${z}`].sort(),
    );
    expect(replayed.some((entry) => entry.event.kind === "topic_changed" && entry.event.topic === "changed")).toBe(true);
    expect(replayed.some((entry) => entry.event.kind === "message" && entry.event.message.to === dave)).toBe(false);

    // Nothing newer than upTo: an empty page.
    expect(await back.ok("events_since", { afterSeq: upTo })).toMatchObject({ events: [], more: false });
    for (const fields of [{ afterSeq: -1 }, { afterSeq: 1.5 }, {}, { afterSeq: 0, limit: 0 }]) {
      expect(await errorOf(back, "events_since", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    }
  });
});
