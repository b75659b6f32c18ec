// Channels: create, list, join, leave, topic, delete, post and history, with their pushes, against one
// real server process over TCP with a real SQLite file.
import { afterAll, beforeAll, describe, expect } from "vitest";
import type { TestClient } from "./helpers/client.js";
import { ChatServer, serverTest, errorOf, historyIds, uniqueChannel, uniqueName, waitForPush } from "./chat-support.js";

let server: ChatServer;
/** `test`, retried only when the server stepped down meanwhile (see serverTest). */
const it = serverTest(() => server);
beforeAll(async () => {
  server = await ChatServer.start();
});
afterAll(async () => {
  await server?.stop();
});

type Channel = { name: string; topic: string; admin: string | null; members: number; joined: boolean };

async function channelView(client: TestClient, name: string): Promise<Channel | undefined> {
  return ((await client.ok("list_channels", { pattern: name })).channels as Channel[]).find((channel) => channel.name === name);
}

async function post(client: TestClient, channel: string, body: string): Promise<number> {
  return ((await client.ok("post", { channel, body })).message as { id: number }).id;
}

/** Three logged-in users; the first owns a new channel the other two have joined. */
async function channelWithMembers(prefix: string) {
  const names = [uniqueName(`${prefix}A`), uniqueName(`${prefix}B`), uniqueName(`${prefix}C`)];
  const clients: TestClient[] = [];
  for (const name of names) clients.push((await server.register(name)).client);
  const channel = uniqueChannel(prefix);
  await clients[0].ok("create_channel", { channel, topic: "about things" });
  await clients[1].ok("join_channel", { channel });
  await clients[2].ok("join_channel", { channel });
  return { names, clients, channel };
}

describe("create_channel and list_channels", () => {
  it("the creator becomes admin and sole member; a taken name answers CHAT_ERR_CHANNEL_EXISTS and a bad one CHAT_ERR_BAD_REQUEST", async () => {
    const owner = uniqueName("owner");
    const { client } = await server.register(owner);
    const { client: other } = await server.register(uniqueName("other"));
    const channel = uniqueChannel("made");
    expect(await client.ok("create_channel", { channel, topic: "hello" })).toEqual({ channel, topic: "hello" });
    expect(await channelView(client, channel)).toEqual({ name: channel, topic: "hello", admin: owner, members: 1, joined: true });
    expect(await channelView(other, channel)).toEqual({ name: channel, topic: "hello", admin: owner, members: 1, joined: false });

    const before = server.snapshot();
    expect(await errorOf(other, "create_channel", { channel })).toBe("CHAT_ERR_CHANNEL_EXISTS");
    expect(await errorOf(client, "create_channel", { channel })).toBe("CHAT_ERR_CHANNEL_EXISTS");
    expect(await errorOf(client, "create_channel", { channel: "general" })).toBe("CHAT_ERR_CHANNEL_EXISTS");
    for (const fields of [
      { channel: channel.toUpperCase() },
      { channel: `#${uniqueChannel("hash")}` },
      { channel: "" },
      { channel: "x".repeat(33) },
      { channel: "-lead" },
      { channel: "has space" },
      { channel: "dot.ted" },
      { channel: 7 },
      { channel: uniqueChannel("topic"), topic: "t".repeat(201) },
      { channel: uniqueChannel("topic"), topic: 5 },
    ]) {
      expect(await errorOf(client, "create_channel", fields), JSON.stringify(fields).slice(0, 60)).toBe("CHAT_ERR_BAD_REQUEST");
    }
    expect(server.snapshot()).toEqual(before);
    // Boundaries: a 32-character name and a 200-character topic are fine; the default topic is "".
    const longest = uniqueChannel("z").padEnd(32, "z");
    await client.ok("create_channel", { channel: longest, topic: "t".repeat(200) });
    const plain = uniqueChannel("plain");
    expect(await client.ok("create_channel", { channel: plain })).toEqual({ channel: plain, topic: "" });
  });

  it("list_channels shows member counts, topics and the viewer's membership, filtered by wildcard and paged with after/next", async () => {
    const prefix = uniqueChannel("lc");
    const { client: a } = await server.register(uniqueName("lcA"));
    const { client: b } = await server.register(uniqueName("lcB"));
    const names = [`${prefix}-one`, `${prefix}-three`, `${prefix}-two`];
    for (const name of names) await a.ok("create_channel", { channel: name, topic: `topic of ${name}` });
    await b.ok("join_channel", { channel: `${prefix}-two` });

    const viewB = (await b.ok("list_channels", { pattern: `${prefix}-*` })).channels as Channel[];
    expect(viewB.map((channel) => [channel.name, channel.members, channel.joined, channel.topic])).toEqual([
      [`${prefix}-one`, 1, false, `topic of ${prefix}-one`],
      [`${prefix}-three`, 1, false, `topic of ${prefix}-three`],
      [`${prefix}-two`, 2, true, `topic of ${prefix}-two`],
    ]);
    expect(((await a.ok("list_channels", { pattern: `${prefix}-t*` })).channels as Channel[]).map((channel) => channel.name)).toEqual([`${prefix}-three`, `${prefix}-two`]);
    expect(((await a.ok("list_channels", { pattern: `${prefix}-?n?` })).channels as Channel[]).map((channel) => channel.name)).toEqual([`${prefix}-one`]);
    const defaults = ((await a.ok("list_channels", { pattern: "general" })).channels as Channel[])[0];
    expect(defaults).toMatchObject({ name: "general", admin: null, joined: true });
    expect(defaults.members).toBeGreaterThanOrEqual(2);

    const seen: string[] = [];
    let after: string | undefined;
    for (let page = 0; page < 10; page += 1) {
      const reply = await a.ok("list_channels", after === undefined ? { pattern: `${prefix}-*`, limit: 2 } : { pattern: `${prefix}-*`, limit: 2, after });
      seen.push(...(reply.channels as Channel[]).map((channel) => channel.name));
      if (reply.next === null) break;
      after = reply.next;
    }
    expect(seen).toEqual(names);
    for (const fields of [{ pattern: "UPPER" }, { pattern: "" }, { limit: 0 }, { limit: 501 }]) {
      expect(await errorOf(a, "list_channels", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    }
  });
});

describe("join_channel and leave_channel", () => {
  it("joining pushes member_joined to the members; joining twice answers CHAT_ERR_ALREADY_MEMBER and an unknown channel CHAT_ERR_UNKNOWN_CHANNEL", async () => {
    const owner = uniqueName("jown");
    const joiner = uniqueName("join");
    const { client: a } = await server.register(owner);
    const { client: b } = await server.register(joiner);
    const { client: outsider } = await server.register(uniqueName("jout"));
    const channel = uniqueChannel("joinc");
    await a.ok("create_channel", { channel, topic: "welcome" });
    expect(await b.ok("join_channel", { channel })).toEqual({ channel, topic: "welcome" });
    const pushed = await waitForPush(a, { kind: "member_joined", channel, user: joiner });
    await waitForPush(b, { kind: "member_joined", channel, user: joiner });
    expect(pushed.seq).toBeGreaterThan(0);
    expect((await channelView(a, channel))?.members).toBe(2);

    const before = server.snapshot();
    expect(await errorOf(b, "join_channel", { channel })).toBe("CHAT_ERR_ALREADY_MEMBER");
    expect(await errorOf(a, "join_channel", { channel })).toBe("CHAT_ERR_ALREADY_MEMBER");
    expect(await errorOf(b, "join_channel", { channel: "general" })).toBe("CHAT_ERR_ALREADY_MEMBER");
    expect(await errorOf(b, "join_channel", { channel: uniqueChannel("nojoin") })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(await errorOf(b, "join_channel", { channel: "#general" })).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);
    expect(outsider.events.some((frame) => frame.event.channel === channel)).toBe(false);
  });

  it("leaving pushes member_left; a non-member answers CHAT_ERR_NOT_MEMBER and loses post and history rights", async () => {
    const { names, clients, channel } = await channelWithMembers("leave");
    const [a, b, c] = clients;
    expect(await c.ok("leave_channel", { channel })).toEqual({ channel });
    await waitForPush(a, { kind: "member_left", channel, user: names[2] });
    await waitForPush(b, { kind: "member_left", channel, user: names[2] });
    expect(await channelView(a, channel)).toMatchObject({ members: 2, admin: names[0] });
    expect(await channelView(c, channel)).toMatchObject({ joined: false });

    const before = server.snapshot();
    expect(await errorOf(c, "leave_channel", { channel })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(await errorOf(c, "leave_channel", { channel: uniqueChannel("noleave") })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(await errorOf(c, "post", { channel, body: "let me in" })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(await errorOf(c, "history", { conversation: `#${channel}` })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(server.snapshot()).toEqual(before);
    // Leaving a default channel is allowed, and the channel stays.
    await c.ok("leave_channel", { channel: "random" });
    expect(await channelView(c, "random")).toMatchObject({ joined: false, admin: null });
    await c.ok("join_channel", { channel: "random" });
  });

  it("when the admin leaves, the longest-standing member becomes admin; when the last member leaves, the channel is gone", async () => {
    const { names, clients, channel } = await channelWithMembers("succ");
    const [a, b, c] = clients;
    await a.ok("leave_channel", { channel });
    await waitForPush(b, { kind: "admin_changed", channel, admin: names[1] });
    await waitForPush(c, { kind: "admin_changed", channel, admin: names[1] });
    expect(await channelView(c, channel)).toMatchObject({ admin: names[1], members: 2 });
    expect(await errorOf(a, "set_topic", { channel, topic: "former admin" })).toBe("CHAT_ERR_FORBIDDEN");
    await b.ok("set_topic", { channel, topic: "new admin" });
    // Rejoining puts the former admin at the back of the line.
    await a.ok("join_channel", { channel });
    await b.ok("leave_channel", { channel });
    expect(await channelView(a, channel)).toMatchObject({ admin: names[2], members: 2 });
    await c.ok("leave_channel", { channel });
    await a.ok("leave_channel", { channel });
    expect(await channelView(a, channel)).toBeUndefined();
    expect(await errorOf(a, "join_channel", { channel })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
  });
});

describe("set_topic and delete_channel", () => {
  it("the admin sets the topic and members get topic_changed; anyone else answers CHAT_ERR_FORBIDDEN", async () => {
    const { names, clients, channel } = await channelWithMembers("topic");
    const [a, b] = clients;
    const { client: outsider } = await server.register(uniqueName("tout"));
    expect(await a.ok("set_topic", { channel, topic: "fresh topic" })).toEqual({ channel, topic: "fresh topic" });
    const pushed = await waitForPush(b, { kind: "topic_changed", channel });
    expect(pushed.event).toEqual({ kind: "topic_changed", channel, topic: "fresh topic", by: names[0] });
    expect((await channelView(outsider, channel))?.topic).toBe("fresh topic");

    const before = server.snapshot();
    expect(await errorOf(b, "set_topic", { channel, topic: "member" })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(outsider, "set_topic", { channel, topic: "outsider" })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "set_topic", { channel: "general", topic: "default channels have no admin" })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "set_topic", { channel: uniqueChannel("notopic"), topic: "x" })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(await errorOf(a, "set_topic", { channel, topic: "t".repeat(201) })).toBe("CHAT_ERR_BAD_REQUEST");
    expect(await errorOf(a, "set_topic", { channel })).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);
    expect(outsider.events.some((frame) => frame.event.channel === channel)).toBe(false);
    await a.ok("set_topic", { channel, topic: "" });
    expect((await channelView(b, channel))?.topic).toBe("");
  });

  it("only the admin deletes a channel; every member gets channel_deleted and its history is gone", async () => {
    const { names, clients, channel } = await channelWithMembers("del");
    const [a, b, c] = clients;
    const { client: outsider } = await server.register(uniqueName("dout"));
    await post(b, channel, "soon gone");
    const before = server.snapshot();
    expect(await errorOf(b, "delete_channel", { channel })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(outsider, "delete_channel", { channel })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "delete_channel", { channel: "general" })).toBe("CHAT_ERR_FORBIDDEN");
    expect(await errorOf(a, "delete_channel", { channel: uniqueChannel("nodel") })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(server.snapshot()).toEqual(before);

    expect(await a.ok("delete_channel", { channel })).toEqual({ channel });
    for (const member of [a, b, c]) {
      const pushed = await waitForPush(member, { kind: "channel_deleted", channel });
      expect(pushed.event).toEqual({ kind: "channel_deleted", channel, by: names[0] });
    }
    expect(outsider.events.some((frame) => frame.event.channel === channel)).toBe(false);
    expect(await channelView(b, channel)).toBeUndefined();
    expect(await errorOf(b, "history", { conversation: `#${channel}` })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect(await errorOf(b, "post", { channel, body: "anyone?" })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    expect((await b.ok("unread")).conversations.some((entry: { conversation: string }) => entry.conversation === `#${channel}`)).toBe(false);
    // The name can be used again, for a channel with no past.
    await b.ok("create_channel", { channel });
    expect(await channelView(b, channel)).toMatchObject({ admin: names[1], members: 1 });
    expect((await b.ok("history", { conversation: `#${channel}` })).messages).toEqual([]);
  });
});

describe("post and history", () => {
  it("a post is pushed to online members only; non-members answer CHAT_ERR_NOT_MEMBER and unknown channels CHAT_ERR_UNKNOWN_CHANNEL", async () => {
    const { names, clients, channel } = await channelWithMembers("post");
    const [a, b, c] = clients;
    const { client: outsider } = await server.register(uniqueName("pout"));
    const reply = await a.ok("post", { channel, body: "hello channel" });
    expect(reply.message).toMatchObject({ conversation: `#${channel}`, from: names[0], body: "hello channel" });
    expect(reply.message.to).toBeUndefined();
    for (const member of [a, b, c]) {
      const pushed = await waitForPush(member, { kind: "message", message: { id: reply.message.id } });
      expect(pushed.seq).toBe(reply.message.id);
      expect(pushed.event.message).toEqual(reply.message);
    }

    const before = server.snapshot();
    expect(await errorOf(outsider, "post", { channel, body: "not a member" })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(await errorOf(a, "post", { channel: uniqueChannel("nopost"), body: "x" })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");
    for (const fields of [{ channel, body: "" }, { channel, body: " " }, { channel, body: "x".repeat(4001) }, { channel }, { channel: `#${channel}`, body: "x" }]) {
      expect(await errorOf(a, "post", fields), JSON.stringify(fields).slice(0, 60)).toBe("CHAT_ERR_BAD_REQUEST");
    }
    expect(server.snapshot()).toEqual(before);
    // A member who left gets no more posts.
    await c.ok("leave_channel", { channel });
    const later = await post(a, channel, "after c left");
    await waitForPush(b, { kind: "message", message: { id: later } });
    expect(c.events.some((frame) => frame.event.kind === "message" && frame.event.message.id === later)).toBe(false);
    expect(outsider.events.some((frame) => frame.event.channel === channel || frame.event.message?.conversation === `#${channel}`)).toBe(false);
  });

  it("history is for members only and pages with before and after; a deleted post leaves it and members get message_deleted", async () => {
    const { names, clients, channel } = await channelWithMembers("hist");
    const [a, b, c] = clients;
    const { client: outsider } = await server.register(uniqueName("hout"));
    const ids: number[] = [];
    for (let i = 0; i < 6; i += 1) ids.push(await post(clients[i % 3], channel, `post ${i}`));

    const latest = await c.ok("history", { conversation: `#${channel}`, limit: 4 });
    expect(latest.messages.map((message: { id: number }) => message.id)).toEqual(ids.slice(2));
    expect(latest.messages.map((message: { from: string }) => message.from)).toEqual([names[2], names[0], names[1], names[2]]);
    expect((await c.ok("history", { conversation: `#${channel}`, limit: 4, before: ids[2] })).messages.map((message: { id: number }) => message.id)).toEqual(ids.slice(0, 2));
    expect((await c.ok("history", { conversation: `#${channel}`, limit: 4, after: ids[0] })).messages.map((message: { id: number }) => message.id)).toEqual(ids.slice(1, 5));
    expect(await errorOf(outsider, "history", { conversation: `#${channel}` })).toBe("CHAT_ERR_NOT_MEMBER");
    expect(await errorOf(outsider, "history", { conversation: `#${uniqueChannel("nohist")}` })).toBe("CHAT_ERR_UNKNOWN_CHANNEL");

    const before = server.snapshot();
    expect(await errorOf(a, "delete_message", { messageId: ids[1] })).toBe("CHAT_ERR_FORBIDDEN");
    expect(server.snapshot()).toEqual(before);
    expect(await b.ok("delete_message", { messageId: ids[1] })).toEqual({ messageId: ids[1] });
    for (const member of [a, b, c]) {
      const pushed = await waitForPush(member, { kind: "message_deleted", messageId: ids[1] });
      expect(pushed.event).toEqual({ kind: "message_deleted", conversation: `#${channel}`, messageId: ids[1] });
    }
    expect(outsider.events.some((frame) => frame.event.kind === "message_deleted")).toBe(false);
    expect(await historyIds(a, `#${channel}`)).toEqual([ids[0], ...ids.slice(2)]);
    expect(await errorOf(b, "delete_message", { messageId: ids[1] })).toBe("CHAT_ERR_UNKNOWN_MESSAGE");
  });

  it("channel unread counts follow the read marker and ignore the reader's own posts", async () => {
    const { clients, channel } = await channelWithMembers("unrd");
    const [a, b] = clients;
    const ids = [await post(a, channel, "one"), await post(a, channel, "two"), await post(b, channel, "mine")];
    const unreadOf = async (client: TestClient) =>
      ((await client.ok("unread")).conversations as { conversation: string; unread: number; lastMessageId: number }[]).find((entry) => entry.conversation === `#${channel}`);
    expect(await unreadOf(b)).toEqual({ conversation: `#${channel}`, unread: 2, lastMessageId: ids[1] });
    await b.ok("mark_read", { conversation: `#${channel}`, messageId: ids[0] });
    expect(await unreadOf(b)).toEqual({ conversation: `#${channel}`, unread: 1, lastMessageId: ids[1] });
    await b.ok("mark_read", { conversation: `#${channel}`, messageId: ids[2] });
    expect((await unreadOf(b))?.unread).toBe(0);
    expect(await unreadOf(a)).toEqual({ conversation: `#${channel}`, unread: 1, lastMessageId: ids[2] });
  });
});

describe("pushes follow membership at the entry", () => {
  it("a user who joins right after a post (even in the same group commit) never gets it as a push; one who joined before does", async () => {
    // Method: a post and a join sent back to back on two connections, so the server often logs both in
    // one batch and pushes once both are committed. Pushes to a connection keep log order, so once a
    // later post has arrived, an earlier push that has not arrived never will.
    const poster = (await server.register(uniqueName("pushP"))).client;
    const rounds = 15;
    let joinedAfter = 0;
    for (let round = 0; round < rounds; round += 1) {
      const channel = uniqueChannel("pushm");
      await poster.ok("create_channel", { channel });
      const joiner = (await server.register(uniqueName("pushJ"))).client;
      const [posted, joined] = await Promise.all([poster.request("post", { channel, body: `first ${round}` }), joiner.request("join_channel", { channel })]);
      expect(posted.type).toBe("ok");
      expect(joined.type).toBe("ok");
      const firstId = (posted.data!.message as { id: number }).id;
      const second = await post(poster, channel, `second ${round}`);
      await waitForPush(joiner, { kind: "message", message: { id: second } });
      const got = joiner.events.some((frame) => frame.event?.message?.id === firstId);
      // The join's log index is its notice's seq at the poster, who is a member: it tells the order.
      const joinSeq = (await waitForPush(poster, { kind: "member_joined", channel })).seq!;
      if (joinSeq > firstId) joinedAfter += 1;
      expect(got, `round ${round}: post ${firstId}, join ${joinSeq}`).toBe(joinSeq < firstId);
      joiner.close();
    }
    // The interesting order happened at least once.
    expect(joinedAfter).toBeGreaterThan(0);
  });
});
