// The real full-screen client, driven through tmux: typed keys in, screen text (capture-pane) out.
// Needs tmux on PATH (CI: apt-get install -y tmux). A private tmux socket keeps this away from any
// other tmux server; only that server is killed at the end.
import { execa } from "execa";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { withRawClient } from "./helpers/client.js";
import { TestCluster, repoRoot, sleep } from "./helpers/cluster.js";

const password = "password123";
const socket = `chatplus-test-${randomBytes(4).toString("hex")}`;
const screenWaitMs = 25_000;
let cluster: TestCluster;
/** Client logs and stderr (kept out of the cluster directory). */
const scratch = mkdtempSync(join(tmpdir(), "client-tmux-"));

function tmux(...args: string[]) {
  return execa("tmux", ["-L", socket, ...args], { reject: true, timeout: 10_000 });
}

function shellQuote(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/**
 * Starts a client in its own tmux session of 120x40, in a clean environment (no CI=..., so Ink draws
 * interactively). When the client exits, the pane stays and shows its exit status and stderr, so a
 * crash is visible in the failure message.
 */
async function startClient(name: string): Promise<void> {
  const client = [
    "env",
    "-i",
    `PATH=${process.env.PATH ?? "/usr/bin:/bin"}`,
    `HOME=${process.env.HOME ?? "/tmp"}`,
    "TERM=xterm-256color",
    "LANG=C.UTF-8",
    process.execPath,
    "--import",
    "tsx",
    join(repoRoot, "client.ts"),
    "--config",
    cluster.configPath,
    "--log-file",
    join(scratch, `client-${name}.log`),
  ]
    .map(shellQuote)
    .join(" ");
  const stderr = shellQuote(join(scratch, `client-${name}.stderr`));
  const command = `${client} 2>${stderr}; echo "client exited with status $?"; cat ${stderr}; sleep 3600`;
  await tmux("new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", repoRoot, command);
}

async function screen(name: string): Promise<string> {
  return (await tmux("capture-pane", "-p", "-t", name)).stdout;
}

/** Polls the screen until `test` holds; fails with the last screen if it never does. */
async function waitForScreen(name: string, test: (text: string) => boolean, what: string, timeoutMs = screenWaitMs): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let text = "";
  while (Date.now() < deadline) {
    text = await screen(name);
    if (test(text)) return text;
    await sleep(100);
  }
  throw new Error(`${name}: timed out waiting for ${what}; screen was:\n${text}`);
}

async function type(name: string, text: string): Promise<void> {
  await tmux("send-keys", "-t", name, "-l", text);
  await tmux("send-keys", "-t", name, "Enter");
}

function occurrences(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

function statusBar(text: string): string {
  return text.split("\n").find((line) => line.includes("] [") && /\[(server \d+|no server)/.test(line)) ?? "";
}

/** The current window's name in the status bar ("[2:#lobby]" -> "#lobby"), or "" if none shows. */
function currentWindow(text: string): string {
  return /\[\d+:([#@(][^\]]*)\]/.exec(statusBar(text))?.[1] ?? "";
}

/** The current window's number in the status bar. */
function currentNumber(text: string): number {
  return Number(/\[(\d+):[#@(][^\]]*\]/.exec(statusBar(text))?.[1]);
}

async function registerInUi(name: string): Promise<void> {
  await waitForScreen(name, (text) => text.includes("/help for commands"), "the client to start");
  await type(name, `/register ${name}`);
  await waitForScreen(name, (text) => text.includes(`New password for ${name}:`), "the password prompt");
  await type(name, password);
  await waitForScreen(name, (text) => text.includes("Repeat the password:"), "the repeat prompt");
  await type(name, password);
  const text = await waitForScreen(name, (text) => text.includes(`registered and logged in as ${name}`), "registration");
  expect(text).not.toContain(password);
}

beforeAll(async () => {
  await execa("tmux", ["-V"]).catch(() => {
    throw new Error("tmux is not installed (apt-get install -y tmux)");
  });
  cluster = await TestCluster.create({ servers: 3 });
  await cluster.startAll();
  await cluster.waitForPrimary();
});

afterAll(async () => {
  await execa("tmux", ["-L", socket, "kill-server"], { reject: false });
  // tmux leaves its socket file behind; remove ours (and only ours).
  rmSync(join(process.env.TMUX_TMPDIR ?? "/tmp", `tmux-${process.getuid?.() ?? 0}`, socket), { force: true });
  await cluster?.destroy();
  if (!process.env.CHATPLUS_KEEP_TEST_DATA) rmSync(scratch, { recursive: true, force: true });
});

describe("full-screen client in tmux", () => {
  it("two users chat both ways across a kill -9 of the primary; every message shows once and the status bar follows the new server", async () => {
    // Goal: the failover is visible (status bar, notice) and costs no message and duplicates none.
    // Method: alice and bob register through typed slash commands and masked prompts, open a DM
    // window with each other, exchange messages, we kill -9 the primary, they exchange more, and we
    // read both screens with capture-pane.
    await Promise.all([startClient("alice"), startClient("bob")]);
    await Promise.all([registerInUi("alice"), registerInUi("bob")]);
    // alice also has #lobby open: the failover notices must show there too.
    await type("alice", "/create #lobby");
    const lobby = currentNumber(await waitForScreen("alice", (text) => currentWindow(text) === "#lobby", "alice's #lobby window"));
    await type("alice", "/query bob");
    await type("bob", "/query alice");
    await waitForScreen("alice", (text) => text.includes("@bob - direct messages"), "alice's @bob window");
    await waitForScreen("bob", (text) => text.includes("@alice - direct messages"), "bob's @alice window");

    const before = ["alice-says-hi-before", "bob-answers-before"];
    await type("alice", before[0]);
    await waitForScreen("bob", (text) => text.includes(`<alice> ${before[0]}`), "alice's first message at bob");
    await type("bob", before[1]);
    await waitForScreen("alice", (text) => text.includes(`<bob> ${before[1]}`), "bob's answer at alice");

    const killed = await cluster.waitForPrimary();
    await cluster.kill(killed);
    const next = await cluster.waitForPrimary(15_000);
    for (const name of ["alice", "bob"]) {
      await waitForScreen(name, (text) => /\[server (\d+)[^\]]*\] \[ready\]/.test(statusBar(text)) && !statusBar(text).includes(`[server ${killed} `), `${name}'s status bar to leave server ${killed}`);
    }

    const after = ["alice-after-failover", "bob-after-failover"];
    await type("alice", after[0]);
    await waitForScreen("bob", (text) => text.includes(`<alice> ${after[0]}`), "alice's post-failover message at bob");
    await type("bob", after[1]);
    await waitForScreen("alice", (text) => text.includes(`<bob> ${after[1]}`), "bob's post-failover message at alice");

    await sleep(500); // a duplicate, if any, would be drawn by now
    const current = await cluster.waitForPrimary(15_000);
    for (const name of ["alice", "bob"]) {
      const text = await screen(name);
      for (const marker of [...before, ...after]) expect(occurrences(text, marker), `${name} shows ${marker} once:\n${text}`).toBe(1);
      expect(text).toContain(`lost server ${killed}`);
      expect(text).toMatch(/failover complete: now on server \d+/);
      expect(statusBar(text), `${name}'s status bar:\n${text}`).toContain(`[server ${current} `);
      expect(statusBar(text)).toContain("[ready]");
      expect(statusBar(text)).toContain(`[${name}]`);
      expect(text).not.toContain(password);
    }
    expect([next, current]).not.toContain(killed);

    // irssi prints a disconnect in every window of the server: #lobby and the status window too.
    for (const [number, window] of [[lobby, "#lobby"], [1, "(status)"]] as const) {
      await type("alice", `/win ${number}`);
      const text = await waitForScreen("alice", (text) => currentWindow(text) === window, `alice's ${window} window`);
      expect(text, `alice's ${window} window`).toContain(`lost server ${killed}`);
      expect(text, `alice's ${window} window`).toMatch(/failover complete: now on server \d+/);
    }
  });

  it("/join of a channel you are in switches to its window; /msg from another window echoes [msg(user)] there", async () => {
    // Goal: the irssi conventions for /join and /msg. Method: dave creates #den (joined as admin)
    // with a topic, closes its window and types /join #den, which reopens it with its topic; then,
    // from #den, /msg to erin.
    await Promise.all([startClient("dave"), startClient("erin")]);
    await Promise.all([registerInUi("dave"), registerInUi("erin")]);
    await type("dave", "/create #den den-topic");
    await waitForScreen("dave", (text) => currentWindow(text) === "#den" && text.includes("#den - den-topic"), "dave's #den window");
    await type("dave", "/close");
    await waitForScreen("dave", (text) => currentWindow(text) !== "#den", "#den's window to close");
    await type("dave", "/join #den");
    let text = await waitForScreen("dave", (text) => currentWindow(text) === "#den" && text.includes("already in #den"), "/join to switch to #den");
    expect(text).not.toContain("CHAT_ERR_ALREADY_MEMBER");
    await waitForScreen("dave", (text) => text.includes("#den - den-topic"), "the reopened #den window's topic");
    // A topic is any text its admin chose: set from a raw connection, its control characters show
    // as "?" in the top bar and never reach the terminal as an escape sequence (here OSC 0, the title).
    const primary = cluster.machine(await cluster.waitForPrimary());
    await withRawClient(primary, "tmux-raw", async (raw) => {
      await raw.ok("login", { username: "dave", password });
      await raw.ok("set_topic", { channel: "den", topic: "\u001b]0;pwned\u0007 after" });
    });
    await waitForScreen("dave", (text) => text.includes("#den - ?]0;pwned? after"), "the topic with its control characters as ?");

    await type("dave", "/msg erin hello-erin-via-msg");
    text = await waitForScreen("dave", (text) => text.includes("[msg(erin)] hello-erin-via-msg"), "the /msg echo in #den");
    expect(currentWindow(text)).toBe("#den");
    await waitForScreen("erin", (text) => text.includes(":@dave(1)"), "the DM's activity at erin");
    await type("erin", "/query dave");
    await waitForScreen("erin", (text) => text.includes("<dave> hello-erin-via-msg"), "the DM at erin");
    await type("dave", "/query erin");
    await waitForScreen("dave", (text) => currentWindow(text) === "@erin" && text.includes("<dave> hello-erin-via-msg"), "the DM in dave's @erin window");
  });

  it("/help lists the commands, Tab completes, PgUp shows older lines with a -- more -- hint, and /quit ends the client", async () => {
    // Goal: the irssi-style basics work on a real terminal. Method: type into a fresh (logged-out)
    // client and read the screen.
    const name = "carol";
    await startClient(name);
    await waitForScreen(name, (text) => text.includes("/help for commands") && text.includes("[ready]"), "the client to start");
    await type(name, "/help");
    await waitForScreen(name, (text) => text.includes("/delete-account") && text.includes("/query <user|#channel>"), "the help text");
    await type(name, "/help msg");
    await waitForScreen(name, (text) => text.includes("/msg <user> <text> - send a direct message"), "help for /msg");
    await tmux("send-keys", "-t", name, "-l", "/chan");
    await tmux("send-keys", "-t", name, "Tab");
    await waitForScreen(name, (text) => text.split("\n").some((line) => line.trimEnd() === "[(status)] /channels"), "tab completion of /chan");
    await tmux("send-keys", "-t", name, "C-u");
    await waitForScreen(name, (text) => text.split("\n").some((line) => line.trimEnd() === "[(status)]"), "the input line to clear");
    for (let i = 0; i < 45; i += 1) await tmux("send-keys", "-t", name, "-l", `/help login\r`);
    await waitForScreen(name, (text) => occurrences(text, "/login <user> - log in") >= 30, "a screenful of output");
    await tmux("send-keys", "-t", name, "PPage");
    await waitForScreen(name, (text) => text.includes("-- more --"), "the -- more -- hint");
    await tmux("send-keys", "-t", name, "NPage");
    await tmux("send-keys", "-t", name, "NPage");
    await tmux("send-keys", "-t", name, "NPage");
    await waitForScreen(name, (text) => !text.includes("-- more --"), "the hint to go away at the bottom");
    await type(name, "/quit");
    await waitForScreen(name, (text) => text.includes("client exited with status 0"), "the client to exit with status 0");
  });

  it("/history into a full window says what did not fit instead of claiming it loaded it", { timeout: 120_000 }, async () => {
    // Goal: a window keeps its newest 2,000 lines, and /history must not report older messages that
    // were dropped again at once. Method: 2,600 posts to #deep from a raw connection; gina joins it
    // in the UI (50 newest) and loads older pages of 500 until the window is full.
    const primary = cluster.machine(await cluster.waitForPrimary());
    await withRawClient(primary, "tmux-deep", async (raw) => {
      await raw.ok("register", { username: "fern", password });
      await raw.ok("create_channel", { channel: "deep", topic: "" });
      for (let n = 0; n < 2600; n += 1) await raw.ok("post", { channel: "deep", body: `deep-${n}` });
    });
    const name = "gina";
    await startClient(name);
    await registerInUi(name);
    await type(name, "/join #deep");
    await waitForScreen(name, (text) => currentWindow(text) === "#deep" && text.includes("deep-2599"), "#deep with its newest messages");
    for (let page = 1; page <= 3; page += 1) {
      await type(name, "/history 500");
      const text = await waitForScreen(name, (text) => occurrences(text, "loaded 500 older message(s); PgUp to read them") === page, `older page ${page}`);
      // Older messages go above the newer ones, past the status lines: the bottom still shows the
      // newest (tests/client-window.test.ts checks the whole window's order and counts).
      expect(text).toContain("deep-2599");
    }
    // 50 + 1,500 messages and the status lines: the fourth page fits only in part.
    await type(name, "/history 500");
    const partly = await waitForScreen(name, (text) => /loaded (\d+) older message\(s\), (\d+) did not fit/.test(text), "a page that fits in part");
    const [, kept, dropped] = /loaded (\d+) older message\(s\), (\d+) did not fit/.exec(partly)!.map(Number);
    expect(kept + dropped).toBe(500);
    expect(kept).toBeGreaterThan(0);
    expect(dropped).toBeGreaterThan(0);
    await type(name, "/history 500");
    await waitForScreen(name, (text) => text.includes("window full at 2000 lines: no older messages fit"), "the full window's answer");
    await type(name, "/quit");
    await waitForScreen(name, (text) => text.includes("client exited with status 0"), "the client to exit");
  });

  it("a message that cannot be sent because every server is down is named, truncated, when it fails (runs last: stops the cluster)", { timeout: 60_000 }, async () => {
    // Goal: the user learns which text to retype. Method: frank is in #attic, every server is killed,
    // and once the status bar shows the failover, frank types a long line; after the retry budget the
    // client must show it (first 57 characters and "...") as not sent.
    const name = "frank";
    await startClient(name);
    await registerInUi(name);
    await type(name, "/create #attic");
    await waitForScreen(name, (text) => currentWindow(text) === "#attic", "frank's #attic window");
    for (const id of cluster.config.machines.map((machine) => machine.id)) if (cluster.isRunning(id)) await cluster.kill(id);
    await waitForScreen(name, (text) => statusBar(text).includes("[FAILING-OVER]"), "the status bar to show the failover");
    const long = `unsendable-${"x".repeat(60)}-tail`;
    await type(name, long);
    const text = await waitForScreen(name, (text) => text.includes("not sent (no primary answered within 15 s): "), "the not-sent notice", 45_000);
    expect(text).toContain(`not sent (no primary answered within 15 s): "${long.slice(0, 57)}..."`);
    expect(text).not.toContain("-tail");
    expect(text).not.toMatch(/CHAT_ERR_UNAVAILABLE|post #\d+/);
  });
});
