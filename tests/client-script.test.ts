// The client's scriptable mode, end to end: real client processes against a real 3-server cluster.
import { execa } from "execa";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster, repoRoot } from "./helpers/cluster.js";

const password = "password123";
let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.create({ servers: 3 });
  await cluster.startAll();
  await cluster.waitForPrimary();
});

afterAll(async () => {
  await cluster?.destroy();
});

/** Runs one client command; the password comes from the environment, never from argv. */
function client(args: string[], env: Record<string, string> = { CHATPLUS_PASSWORD: password }) {
  const fullArgs = ["--import", "tsx", join(repoRoot, "client.ts"), "--config", cluster.configPath, "--log-file", join(cluster.dir, "client.log"), ...args];
  return execa(process.execPath, fullArgs, { cwd: repoRoot, reject: false, env, extendEnv: false, timeout: 40_000 });
}

describe("client scriptable mode", () => {
  it("--help prints the usage to stdout and exits 0", async () => {
    const result = await client(["--help"]);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain("Usage:");
    expect(result.stdout).toContain("history @USER|#CHANNEL");
  });

  it("two users register, send, post, read --json and history --json", async () => {
    // Goal: every scripted command works against the replicated cluster and prints parseable JSON.
    // Method: register alice and bob, alice DMs bob while he is offline and posts in #general,
    // then bob reads his undelivered messages and both histories as JSON.
    const registered = await Promise.all(["alice", "bob"].map((user) => client(["--user", user, "--json", "register"])));
    for (const [i, user] of ["alice", "bob"].entries()) {
      expect(registered[i].exitCode, registered[i].stderr).toBe(0);
      expect(JSON.parse(registered[i].stdout)).toEqual({ username: user });
    }
    const [sent, posted] = await Promise.all([
      client(["--user", "alice", "--json", "send", "bob", "hello", "bob,", "from", "a", "script"]),
      client(["--user", "alice", "post", "#general", "morning all"]),
    ]);
    expect(sent.exitCode, sent.stderr).toBe(0);
    expect(JSON.parse(sent.stdout).message).toMatchObject({ from: "alice", to: "bob", body: "hello bob, from a script" });
    expect(posted.exitCode, posted.stderr).toBe(0);
    expect(posted.stdout).toMatch(/#general <alice> morning all/);

    const read = await client(["--user", "bob", "read", "--json"]);
    expect(read.exitCode, read.stderr).toBe(0);
    const undelivered = JSON.parse(read.stdout);
    expect(undelivered.messages.map((message: { body: string }) => message.body)).toEqual(["hello bob, from a script"]);
    expect(undelivered.remaining).toBe(0);

    const [readAgain, dmHistory, channelHistory, users] = await Promise.all([
      client(["--user", "bob", "read", "--json"]),
      client(["--user", "bob", "history", "@alice", "--json"]),
      client(["--user", "bob", "--json", "history", "#general"]),
      client(["--user", "bob", "--json", "users", "a*"]),
    ]);
    expect(JSON.parse(readAgain.stdout).messages, "read delivers each message once").toEqual([]);
    expect(dmHistory.exitCode, dmHistory.stderr).toBe(0);
    expect(JSON.parse(dmHistory.stdout).messages).toMatchObject([{ from: "alice", body: "hello bob, from a script", conversation: "@alice" }]);
    expect(channelHistory.exitCode, channelHistory.stderr).toBe(0);
    expect(JSON.parse(channelHistory.stdout).messages.map((message: { body: string }) => message.body)).toContain("morning all");
    expect(JSON.parse(users.stdout).users.map((user: { username: string }) => user.username)).toEqual(["alice"]);
  });

  it("channels can be created, joined, listed and left", async () => {
    const passwordFile = join(cluster.dir, "carol.password");
    writeFileSync(passwordFile, `${password}\n`);
    const fromFile = ["--password-file", passwordFile];
    const registered = await Promise.all([client(["--user", "carol", ...fromFile, "register"], {}), client(["--user", "dave", "register"])]);
    for (const result of registered) expect(result.exitCode, result.stderr).toBe(0);
    expect((await client(["--user", "carol", ...fromFile, "create", "scripted", "a", "topic"], {})).exitCode).toBe(0);
    const joined = await client(["--user", "dave", "--json", "join", "scripted"]);
    expect(joined.exitCode, joined.stderr).toBe(0);
    expect(JSON.parse(joined.stdout)).toEqual({ channel: "scripted", topic: "a topic" });
    const listed = await client(["--user", "dave", "--json", "channels", "scr*"]);
    expect(JSON.parse(listed.stdout).channels).toMatchObject([{ name: "scripted", members: 2, joined: true, admin: "carol" }]);
    expect((await client(["--user", "dave", "leave", "#scripted"])).exitCode).toBe(0);
  });

  it("a failure exits non-zero and prints the error code", async () => {
    const [wrong, taken, unknown] = await Promise.all([
      client(["--user", "alice", "--json", "history", "#general"], { CHATPLUS_PASSWORD: "not-the-password" }),
      client(["--user", "alice", "register"]),
      client(["--user", "alice", "send", "nobody-here", "hi"]),
    ]);
    expect(wrong.exitCode).toBe(1);
    expect(wrong.stderr).toContain("CHAT_ERR_BAD_CREDENTIALS");
    expect(JSON.parse(wrong.stdout).error.code).toBe("CHAT_ERR_BAD_CREDENTIALS");
    expect(taken.exitCode).toBe(1);
    expect(taken.stderr).toContain("CHAT_ERR_NAME_TAKEN");
    expect(unknown.exitCode).toBe(1);
    expect(unknown.stderr).toContain("CHAT_ERR_UNKNOWN_USER");
  });

  it("refuses a password on the command line and a missing password", async () => {
    const onArgv = await client(["--user", "alice", "--password", password, "read"]);
    expect(onArgv.exitCode).toBe(2);
    expect(onArgv.stderr).toContain("--password");
    const missing = await client(["--user", "alice", "read"], {});
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain("CHATPLUS_PASSWORD");
  });
});
