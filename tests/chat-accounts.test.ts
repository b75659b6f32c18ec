// Accounts, sessions and user listing, against one real server process over TCP with a real SQLite file.
// Every failure is checked by its error code, and a failed request is checked to have changed nothing.
import { readFileSync, existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect } from "vitest";
import { anonymousRequestTypes, requestTypes } from "../connections/schema.js";
import { ChatServer, serverTest, defaultPassword, errorOf, uniqueChannel, uniqueName, waitForPush, waitUntil } from "./chat-support.js";

let server: ChatServer;
/** `test`, retried only when the server stepped down meanwhile (see serverTest). */
const it = serverTest(() => server);
beforeAll(async () => {
  server = await ChatServer.start();
});
afterAll(async () => {
  await server?.stop();
});

let twoCharacterNames = 0;
/** A 2-character username (the shortest allowed) not used before in this file. */
function twoCharacterName(): string {
  twoCharacterNames += 1;
  return `q${twoCharacterNames.toString(36)}`;
}

/** Every key anywhere inside a JSON value. */
function allKeys(value: unknown, into: string[] = []): string[] {
  if (Array.isArray(value)) for (const item of value) allKeys(item, into);
  else if (value !== null && typeof value === "object") {
    for (const [key, inner] of Object.entries(value)) {
      into.push(key);
      allKeys(inner, into);
    }
  }
  return into;
}

describe("register", () => {
  it("registering returns a token and seq, joins #general and #random, and no response carries a password, salt or hash", async () => {
    // Goal: the register response is what a client needs and nothing secret. Method: register, list
    // channels, then search every frame the connection received for secret keys and values.
    const username = uniqueName("reg");
    const password = "Sekrit-Register-Pw-9";
    const { client, data } = await server.register(username, password);
    expect(typeof data.token).toBe("string");
    expect(data.token.length).toBeGreaterThan(20);
    expect(data.username).toBe(username);
    expect([...data.channels].sort()).toEqual(["general", "random"]);
    expect(typeof data.seq).toBe("number");
    expect(data.unread.undelivered).toBe(0);

    const listed = await client.ok("list_channels", { pattern: "*" });
    const defaults = listed.channels.filter((channel: { name: string }) => channel.name === "general" || channel.name === "random");
    expect(defaults.map((channel: { joined: boolean }) => channel.joined)).toEqual([true, true]);
    await client.ok("unread");
    await client.ok("list_users", { pattern: username });

    const stored = server.readDb((db) => db.prepare("SELECT salt, hash FROM users WHERE name = ?").get(username) as { salt: string; hash: string });
    const everything = JSON.stringify(client.frames);
    expect(everything).not.toContain(password);
    expect(everything).not.toContain(stored.hash);
    expect(everything).not.toContain(stored.salt);
    expect(allKeys(client.frames).filter((key) => /password|salt|hash|sessionId/i.test(key))).toEqual([]);
  });

  it("usernames are unique ignoring case: a second registration answers CHAT_ERR_NAME_TAKEN and changes nothing", async () => {
    const username = uniqueName("Case");
    await server.register(username);
    const before = server.snapshot();
    for (const variant of [username, username.toLowerCase(), username.toUpperCase()]) {
      const client = await server.hello();
      expect(await errorOf(client, "register", { username: variant, password: defaultPassword })).toBe("CHAT_ERR_NAME_TAKEN");
    }
    expect(server.snapshot()).toEqual(before);
  });

  it("invalid usernames and passwords answer CHAT_ERR_BAD_REQUEST and change nothing", async () => {
    const client = await server.hello();
    const good = uniqueName("ok");
    const cases: Record<string, unknown>[] = [
      { username: "a", password: defaultPassword }, // too short
      { username: "x".repeat(33), password: defaultPassword }, // too long
      { username: "-dash-first", password: defaultPassword },
      { username: "has space", password: defaultPassword },
      { username: "ünicode", password: defaultPassword },
      { username: "semi;colon", password: defaultPassword },
      { username: 12345, password: defaultPassword },
      { username: good, password: "short77" }, // 7 characters: one below the minimum
      { username: good, password: "p".repeat(257) },
      { username: good },
      { password: defaultPassword },
    ];
    const before = server.snapshot();
    for (const fields of cases) expect(await errorOf(client, "register", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);
    // The boundary values are accepted: 2- and 32-character names, 8-character passwords.
    await (await server.hello()).ok("register", { username: twoCharacterName(), password: "exactly8" });
    await (await server.hello()).ok("register", { username: `Q${uniqueName("long")}`.padEnd(32, "z"), password: "p".repeat(256) });
    await client.ok("register", { username: good, password: "exactly8" });
  });

  it("the password is never stored in clear: the users table holds a salt and a scrypt hash, and no byte of the database holds the password", async () => {
    // Goal: a stolen database does not reveal passwords. Method: register with a distinctive password,
    // then search every column of every table, the raw database and WAL files, and the server's log.
    const username = uniqueName("store");
    const password = "Clear-Text-Canary-4711";
    await server.register(username, password);
    const { users, hits } = server.readDb((db) => {
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((row) => row.name);
      const found: string[] = [];
      for (const table of tables) {
        for (const row of db.prepare(`SELECT * FROM ${table}`).all() as Record<string, unknown>[]) {
          for (const [column, value] of Object.entries(row)) {
            const text = Buffer.isBuffer(value) ? value.toString("latin1") : String(value);
            if (text.includes(password) || text.includes(Buffer.from(password).toString("hex")) || text.includes(Buffer.from(password).toString("base64"))) {
              found.push(`${table}.${column}`);
            }
          }
        }
      }
      return { users: db.prepare("SELECT * FROM users WHERE name = ?").all(username) as Record<string, unknown>[], hits: found };
    });
    expect(hits).toEqual([]);
    expect(users).toHaveLength(1);
    expect(Object.keys(users[0])).toEqual(expect.arrayContaining(["salt", "hash"]));
    expect(users[0].salt).toMatch(/^[0-9a-f]{32}$/);
    expect(users[0].hash).toMatch(/^[0-9a-f]{64}$/);
    expect(Object.keys(users[0]).some((column) => /pass/i.test(column))).toBe(false);
    for (const file of [server.dbPath, `${server.dbPath}-wal`, server.cluster.logFile(1)]) {
      if (existsSync(file)) expect(readFileSync(file).includes(Buffer.from(password)), file).toBe(false);
    }
  });
});

describe("login, auth and logout", () => {
  it("login returns a token, unread counts and the seq to resume pushes from", async () => {
    const target = uniqueName("login");
    const sender = uniqueName("sender");
    const { client: first } = await server.register(target);
    first.close();
    const { client: other } = await server.register(sender);
    const sent: number[] = [];
    for (const body of ["one", "two"]) sent.push(((await other.ok("send_dm", { to: target, body })).message as { id: number }).id);

    const { client, data } = await server.login(target.toUpperCase());
    expect(data.username).toBe(target);
    expect(typeof data.token).toBe("string");
    expect(data.unread.undelivered).toBe(2);
    expect(data.unread.conversations).toContainEqual({ conversation: `@${sender}`, unread: 2, lastMessageId: sent[1] });
    expect(data.seq).toBeGreaterThan(sent[1]);
    expect(data.seq).toBe(await server.commitIndex());
    expect(JSON.stringify(client.frames)).not.toContain(defaultPassword);
  });

  it("a wrong password and an unknown user both answer CHAT_ERR_BAD_CREDENTIALS and leave the connection logged out", async () => {
    const username = uniqueName("creds");
    await server.register(username);
    const client = await server.hello();
    const before = server.snapshot();
    expect(await errorOf(client, "login", { username, password: "wrong-password" })).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect(await errorOf(client, "login", { username: uniqueName("nobody"), password: defaultPassword })).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect(await errorOf(client, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(server.snapshot()).toEqual(before);
  });

  it("a logged-in connection answers CHAT_ERR_ALREADY_LOGGED_IN to login and register", async () => {
    const username = uniqueName("twice");
    const { client } = await server.register(username);
    const before = server.snapshot();
    expect(await errorOf(client, "login", { username, password: defaultPassword })).toBe("CHAT_ERR_ALREADY_LOGGED_IN");
    expect(await errorOf(client, "register", { username: uniqueName("second"), password: defaultPassword })).toBe("CHAT_ERR_ALREADY_LOGGED_IN");
    expect(server.snapshot()).toEqual(before);
  });

  it("a token resumes the session on a new connection; forged and garbage tokens answer CHAT_ERR_BAD_SESSION", async () => {
    const username = uniqueName("token");
    const { token } = await server.register(username);
    const { client, data } = await server.auth(token);
    expect(data.username).toBe(username);
    expect(typeof data.seq).toBe("number");
    await client.ok("unread");

    const [sessionId, signature] = token.split(".");
    const flip = (text: string) => (text[0] === "A" ? "B" : "A") + text.slice(1);
    const forged = [
      `${sessionId}.${flip(signature)}`, // right session, wrong signature
      `${flip(sessionId)}.${signature}`, // signature of another session
      `${sessionId}.`,
      sessionId,
      "garbage",
      ".",
      `${"A".repeat(43)}.${"B".repeat(43)}`,
    ];
    for (const bad of forged) {
      const fresh = await server.hello();
      expect(await errorOf(fresh, "auth", { token: bad }), bad).toBe("CHAT_ERR_BAD_SESSION");
      expect(await errorOf(fresh, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    }
    const fresh = await server.hello();
    expect(await errorOf(fresh, "auth", { token: "" })).toBe("CHAT_ERR_BAD_REQUEST");
  });

  it("every request that needs a session answers CHAT_ERR_NOT_LOGGED_IN without one, and changes nothing", async () => {
    // Valid fields for each type, so the only thing wrong is the missing session.
    const validFields: Record<string, Record<string, unknown>> = {
      logout: {},
      delete_account: { password: defaultPassword },
      list_users: {},
      send_dm: { to: "someone", body: "hi" },
      read_undelivered: {},
      history: { conversation: "#general" },
      delete_message: { messageId: 1 },
      create_channel: { channel: uniqueChannel("anon") },
      list_channels: {},
      join_channel: { channel: "general" },
      leave_channel: { channel: "general" },
      set_topic: { channel: "general", topic: "t" },
      delete_channel: { channel: "general" },
      post: { channel: "general", body: "hi" },
      mark_read: { conversation: "#general", messageId: 1 },
      unread: {},
      events_since: { afterSeq: 0 },
    };
    const needSession = requestTypes.filter((type) => !anonymousRequestTypes.has(type));
    expect(needSession.sort()).toEqual(Object.keys(validFields).sort());
    const client = await server.hello();
    const before = server.snapshot();
    for (const type of needSession) expect(await errorOf(client, type, validFields[type]), type).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(server.snapshot()).toEqual(before);
  });

  it("after logout the token no longer works: not on a new connection, and not on another connection that used it", async () => {
    const username = uniqueName("logout");
    const { client, token } = await server.register(username);
    const { client: second } = await server.auth(token);
    await client.ok("logout");
    expect(await errorOf(client, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(await errorOf(second, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(await errorOf(second, "post", { channel: "general", body: "still me?" })).toBe("CHAT_ERR_NOT_LOGGED_IN");
    const fresh = await server.hello();
    expect(await errorOf(fresh, "auth", { token })).toBe("CHAT_ERR_BAD_SESSION");
    // The account itself is untouched: logging in again works.
    const { data } = await server.login(username);
    expect(data.token).not.toBe(token);
  });

  it("a retried logout answers from the log and ends only the session its first attempt ended", async () => {
    // Goal: a deduplicated retry has no side effect of its own. Method: on one connection (one
    // clientId), log out of session A with request id N, resume session B with auth, then resend
    // logout with id N: it gets the original answer, and B stays logged in everywhere.
    const username = uniqueName("relogout");
    const { token: tokenB } = await server.register(username);
    const { client, data } = await server.login(username);
    const { client: elsewhere } = await server.auth(tokenB);
    const first = await client.request("logout", {}, 10000, 900);
    expect(first.type).toBe("ok");
    await client.ok("auth", { token: tokenB });
    const retry = await client.request("logout", {}, 10000, 900);
    expect(retry.type).toBe("ok");
    expect(retry.data).toEqual(first.data);
    await client.ok("unread");
    await elsewhere.ok("unread");
    const fresh = await server.hello();
    expect(await errorOf(fresh, "auth", { token: data.token })).toBe("CHAT_ERR_BAD_SESSION");
    await fresh.ok("auth", { token: tokenB });
  });

  it("identity comes from the session: requests naming a sender (from, actor, user) answer CHAT_ERR_BAD_REQUEST and change nothing", async () => {
    const alice = uniqueName("idA");
    const bob = uniqueName("idB");
    const { client } = await server.register(alice);
    await server.register(bob);
    const channel = uniqueChannel("idc");
    await client.ok("create_channel", { channel });
    const before = server.snapshot();
    const attempts: [string, Record<string, unknown>][] = [
      ["send_dm", { to: bob, body: "spoof", from: bob }],
      ["send_dm", { to: bob, body: "spoof", actor: 1 }],
      ["post", { channel, body: "spoof", from: bob }],
      ["post", { channel, body: "spoof", actor: 2 }],
      ["delete_message", { messageId: 1, actor: 1 }],
      ["set_topic", { channel, topic: "spoof", user: bob }],
      ["delete_account", { password: defaultPassword, username: bob }],
      ["mark_read", { conversation: `#${channel}`, messageId: 1, userId: 1 }],
      ["logout", { sessionId: "x" }],
    ];
    for (const [type, fields] of attempts) expect(await errorOf(client, type, fields), `${type} ${JSON.stringify(fields)}`).toBe("CHAT_ERR_BAD_REQUEST");
    expect(server.snapshot()).toEqual(before);
    expect((await client.ok("history", { conversation: `#${channel}` })).messages).toEqual([]);
  });
});

describe("delete_account", () => {
  it("a wrong password answers CHAT_ERR_BAD_CREDENTIALS and changes nothing", async () => {
    const username = uniqueName("keep");
    const { client } = await server.register(username);
    const before = server.snapshot();
    expect(await errorOf(client, "delete_account", { password: "not-my-password" })).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect(server.snapshot()).toEqual(before);
    expect((await client.ok("list_users", { pattern: username })).users).toEqual([{ username, online: true }]);
    await server.login(username);
  });

  it("deleting an account ends its sessions, frees the name, drops its undelivered queue, passes its admin role to the longest-standing member, and keeps its DM history readable", async () => {
    // Goal: every promise delete_account makes. Method: give the victim a channel with two other
    // members, delivered and undelivered DMs and two sessions; delete; check each consequence.
    const victim = uniqueName("victim");
    const friend = uniqueName("friend");
    const late = uniqueName("late");
    const { client: victimFirst } = await server.register(victim);
    const { client: friendClient } = await server.register(friend);
    const { client: lateClient } = await server.register(late);
    const channel = uniqueChannel("vch");
    await victimFirst.ok("create_channel", { channel });
    await friendClient.ok("join_channel", { channel });
    await lateClient.ok("join_channel", { channel });
    const delivered = (await friendClient.ok("send_dm", { to: victim, body: "seen while online" })).message.id as number;
    const reply = (await victimFirst.ok("send_dm", { to: friend, body: "a reply" })).message.id as number;
    victimFirst.close();
    await waitUntil("victim shown offline", async () => (await friendClient.ok("list_users", { pattern: victim })).users[0]?.online === false);
    const queued = [];
    for (const body of ["queued one", "queued two"]) queued.push((await friendClient.ok("send_dm", { to: victim, body })).message.id as number);

    const { client: victimClient, data: login } = await server.login(victim);
    expect(login.unread.undelivered).toBe(2);
    const { client: victimOther, data: authed } = await server.auth(login.token);
    expect(authed.username).toBe(victim);

    expect(await victimClient.ok("delete_account", { password: defaultPassword })).toMatchObject({ username: victim });

    // Sessions: both connections are logged out, and the token is dead.
    expect(await errorOf(victimClient, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(await errorOf(victimOther, "unread")).toBe("CHAT_ERR_NOT_LOGGED_IN");
    expect(await errorOf(await server.hello(), "auth", { token: login.token })).toBe("CHAT_ERR_BAD_SESSION");
    expect(await errorOf(await server.hello(), "login", { username: victim, password: defaultPassword })).toBe("CHAT_ERR_BAD_CREDENTIALS");

    // The user is gone from listings and cannot be written to.
    expect((await friendClient.ok("list_users", { pattern: victim })).users).toEqual([]);
    expect(await errorOf(friendClient, "send_dm", { to: victim, body: "hello?" })).toBe("CHAT_ERR_UNKNOWN_USER");

    // The admin role passes to the longest-standing member, who is told.
    await waitForPush(friendClient, { kind: "member_left", channel, user: victim });
    await waitForPush(friendClient, { kind: "admin_changed", channel, admin: friend });
    await waitForPush(lateClient, { kind: "admin_changed", channel, admin: friend });
    const listed = (await lateClient.ok("list_channels", { pattern: channel })).channels;
    expect(listed).toEqual([{ name: channel, topic: "", admin: friend, members: 2, joined: true }]);
    await friendClient.ok("set_topic", { channel, topic: "new admin" });
    expect(await errorOf(lateClient, "set_topic", { channel, topic: "not me" })).toBe("CHAT_ERR_FORBIDDEN");

    // The undelivered queue is dropped; the delivered conversation stays readable by the friend.
    const undeliveredLeft = server.readDb(
      (db) => (db.prepare("SELECT count(*) AS n FROM messages m JOIN users u ON u.id = m.recipient_id WHERE u.name = ? AND m.delivered = 0").get(victim) as { n: number }).n,
    );
    expect(undeliveredLeft).toBe(0);
    const history = await friendClient.ok("history", { conversation: `@${victim}` });
    expect(history.messages.map((message: { id: number }) => message.id)).toEqual([delivered, reply]);
    expect(history.messages.map((message: { from: string }) => message.from)).toEqual([friend, victim]);
    for (const id of queued) expect(history.messages.some((message: { id: number }) => message.id === id)).toBe(false);
    // ... and can still be marked read, so its unread count can reach zero.
    await friendClient.ok("mark_read", { conversation: `@${victim}`, messageId: reply });
    const unread = (await friendClient.ok("unread")).conversations.find((entry: { conversation: string }) => entry.conversation === `@${victim}`);
    expect(unread?.unread ?? 0).toBe(0);

    // The name is free again, for a brand-new account.
    const { data: again } = await server.register(victim.toUpperCase());
    expect(again.unread.undelivered).toBe(0);
    expect((await friendClient.ok("list_users", { pattern: victim })).users).toEqual([{ username: victim.toUpperCase(), online: true }]);
  });
});

describe("wrong passwords (per-account throttle)", () => {
  /** Sends login and returns the whole answer frame. */
  async function login(username: string, password: string) {
    return (await server.hello()).request("login", { username, password });
  }

  it("after 5 wrong passwords in a row the account's next check waits about a second, refused at once even with the right password; other accounts, existing sessions and unknown names behave as designed", async () => {
    // Goal: guessing one account's password is slowed, and nothing else is. Method: 5 wrong logins,
    // then the right password inside the wait, on a fresh connection each time (the throttle is per
    // account, not per connection); the same for a name that does not exist; then wait it out.
    const username = uniqueName("guessed");
    const bystander = uniqueName("bystander");
    const { data: registered } = await server.register(username);
    await server.register(bystander);
    const before = server.snapshot();
    for (let attempt = 1; attempt <= 5; attempt += 1) expect((await login(username, `wrong-password-${attempt}`)).code, `attempt ${attempt}`).toBe("CHAT_ERR_BAD_CREDENTIALS");
    const refused = await login(username, defaultPassword);
    expect(refused).toMatchObject({ type: "error", code: "CHAT_ERR_TOO_MANY_ATTEMPTS" });
    expect(refused.retryAfterMs).toBeGreaterThan(0);
    expect(refused.retryAfterMs).toBeLessThanOrEqual(1000);
    expect(refused.message).toMatch(/try again in 1 s/);
    // Upper or lower case, it is the same account.
    expect((await login(username.toUpperCase(), defaultPassword)).code).toBe("CHAT_ERR_TOO_MANY_ATTEMPTS");
    expect(server.snapshot()).toEqual(before);

    // Others are not affected: another account, and a session that already exists.
    await server.login(bystander);
    expect((await server.auth(registered.token)).data.username).toBe(username);

    // A name nobody has is throttled the same way, so the answers do not tell whether it exists.
    const nobody = uniqueName("nobody");
    for (let attempt = 1; attempt <= 5; attempt += 1) expect((await login(nobody, defaultPassword)).code).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect((await login(nobody, defaultPassword)).code).toBe("CHAT_ERR_TOO_MANY_ATTEMPTS");

    // After the wait the right password works, and it clears the count: a wrong one is merely wrong.
    await new Promise((done) => setTimeout(done, Number(refused.retryAfterMs) + 50));
    expect((await login(username, defaultPassword)).type).toBe("ok");
    expect((await login(username, "wrong-password-again")).code).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect((await login(username, defaultPassword)).type).toBe("ok");
  });

  it("checks of one account running at the same time count as failures: 20 parallel guesses get at most 5 password checks", async () => {
    // Goal: many connections cannot start checks before the first wrong one is counted. Method: 20
    // wrong logins at once, each on its own connection; count the answers by code.
    const username = uniqueName("parallel");
    await server.register(username);
    const clients = await Promise.all(Array.from({ length: 20 }, () => server.hello()));
    const answers = await Promise.all(clients.map((client, i) => client.request("login", { username, password: `guessed-password-${i}` })));
    const codes = answers.map((answer) => answer.code);
    expect(codes.filter((code) => code === "CHAT_ERR_BAD_CREDENTIALS")).toHaveLength(5);
    expect(codes.filter((code) => code === "CHAT_ERR_TOO_MANY_ATTEMPTS")).toHaveLength(15);
  });

  it("delete_account's password is throttled too, and a throttled deletion changes nothing", async () => {
    const username = uniqueName("deleter");
    const { client } = await server.register(username);
    const before = server.snapshot();
    for (let attempt = 1; attempt <= 5; attempt += 1) expect(await errorOf(client, "delete_account", { password: `wrong-password-${attempt}` })).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect(await errorOf(client, "delete_account", { password: defaultPassword })).toBe("CHAT_ERR_TOO_MANY_ATTEMPTS");
    expect(server.snapshot()).toEqual(before);
    expect((await client.ok("list_users", { pattern: username })).users).toEqual([{ username, online: true }]);
  });
});

describe("list_users", () => {
  it("patterns match with * and ? ignoring case, results are sorted and paged with after/next", async () => {
    const prefix = uniqueName("lu").toLowerCase();
    const names = [`${prefix}-alpha`, `${prefix}-alps`, `${prefix}-b1`, `${prefix}-beta`, `${prefix}-c`];
    for (const name of names) await server.register(name);
    const { client } = await server.register(uniqueName("looker"));
    const list = async (fields: Record<string, unknown>) => ((await client.ok("list_users", fields)).users as { username: string }[]).map((user) => user.username);

    expect(await list({ pattern: `${prefix}-*` })).toEqual(names);
    expect(await list({ pattern: `${prefix}-al*` })).toEqual([`${prefix}-alpha`, `${prefix}-alps`]);
    expect(await list({ pattern: `${prefix}-b?` })).toEqual([`${prefix}-b1`]);
    expect(await list({ pattern: `${prefix}-????` })).toEqual([`${prefix}-alps`, `${prefix}-beta`]);
    expect(await list({ pattern: `${prefix.toUpperCase()}-ALPHA` })).toEqual([`${prefix}-alpha`]);
    expect(await list({ pattern: `${prefix}-alp` })).toEqual([]);
    expect(await list({ pattern: `*${prefix.slice(2)}-c` })).toEqual([`${prefix}-c`]);

    const seen: string[] = [];
    let after: string | undefined;
    for (let page = 0; page < 10; page += 1) {
      const reply = await client.ok("list_users", after === undefined ? { pattern: `${prefix}-*`, limit: 2 } : { pattern: `${prefix}-*`, limit: 2, after });
      seen.push(...reply.users.map((user: { username: string }) => user.username));
      expect(reply.users.length).toBeLessThanOrEqual(2);
      if (reply.next === null) break;
      expect(reply.next).toBe(seen[seen.length - 1]);
      after = reply.next;
    }
    expect(seen).toEqual(names);

    for (const fields of [{ pattern: "" }, { pattern: "has space" }, { pattern: "[ab]" }, { limit: 0 }, { limit: 501 }, { after: 7 }]) {
      expect(await errorOf(client, "list_users", fields), JSON.stringify(fields)).toBe("CHAT_ERR_BAD_REQUEST");
    }
  });

  it("the online flag is true while a user has a session and false once every session is closed", async () => {
    const username = uniqueName("online");
    const { client: looker } = await server.register(uniqueName("looker"));
    const { client: first } = await server.register(username);
    const { client: second } = await server.login(username);
    const online = async () => ((await looker.ok("list_users", { pattern: username })).users as { online: boolean }[])[0].online;
    expect(await online()).toBe(true);
    // Logging out one session (the response comes after the session is detached) leaves the other online.
    await first.ok("logout");
    expect(await online()).toBe(true);
    second.close();
    await waitUntil("user shown offline", async () => (await online()) === false);
    await server.login(username);
    expect(await online()).toBe(true);
  });
});
