// The terminal client's windows, through its ChatController (no terminal) over a real ClientConnector
// and a real server: /history puts older messages above the newer ones, a window keeps its newest
// windowLinesMax lines, and /history says exactly how many of the messages it loaded are still shown.
// (tests/client-tmux.test.ts drives the same through a real terminal; this file can count lines.)
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ClientConnector } from "../connections/connector.js";
import { loadClusterConfig } from "../connections/consts.js";
import { ChatController, windowLinesMax } from "../ui/controller.js";
import { withRawClient } from "./helpers/client.js";
import { TestCluster } from "./helpers/cluster.js";
import { defaultPassword as password, waitUntil } from "./chat-support.js";

const posts = 2600;
let cluster: TestCluster;
let controller: ChatController | undefined;

beforeAll(async () => {
  cluster = await TestCluster.create({ servers: 1 });
  await cluster.startAll();
  const primary = cluster.machine(await cluster.waitForPrimary());
  await withRawClient(primary, "window-poster", async (raw) => {
    await raw.ok("register", { username: "poster", password });
    await raw.ok("create_channel", { channel: "deep", topic: "" });
    for (let n = 0; n < posts; n += 1) await raw.ok("post", { channel: "deep", body: `deep-${n}` });
  });
});

afterAll(async () => {
  controller?.quit();
  await cluster?.destroy();
});

function type(line: string): void {
  controller!.input.set(line);
  controller!.submit();
}

describe("a conversation window", () => {
  it("/history loads older messages above the newer ones and counts what a full window kept", async () => {
    const logger = pino({ level: "debug" }, pino.destination({ dest: join(cluster.dir, "client-window.log"), sync: true }));
    const connector = new ClientConnector(loadClusterConfig(cluster.configPath), { logger });
    controller = new ChatController(connector, { logger, onQuit: () => {} });
    await controller.start();
    type("/register reader");
    const waitFor = (what: string, condition: () => boolean) => waitUntil(what, condition, 20_000);
    await waitFor("the password prompt", () => controller!.activePrompt !== null);
    type(password);
    await waitFor("the repeat prompt", () => controller!.activePrompt?.label.includes("Repeat") === true);
    type(password);
    await waitFor("the login", () => controller!.windows[0].lines.some((line) => line.text.includes("registered and logged in as reader")));
    type("/join #deep");
    const deep = () => controller!.windows.find((candidate) => candidate.name === "#deep");
    await waitFor("#deep with its newest page", () => deep()?.lines.some((line) => line.text === `deep-${posts - 1}`) === true);
    const window = deep()!;

    const messageIds = () => window.lines.flatMap((line) => (line.messageId === undefined ? [] : [line.messageId]));
    const statusLines = () => window.lines.filter((line) => line.kind === "system" && /older message|did not fit|window full/.test(line.text));
    const loadOlder = async (page: number) => {
      type("/history 500");
      await waitFor(`older page ${page}`, () => statusLines().length >= page);
      return statusLines()[page - 1].text;
    };

    for (let page = 1; page <= 3; page += 1) {
      expect(await loadOlder(page)).toBe("loaded 500 older message(s); PgUp to read them");
      const ids = messageIds();
      // In id order, with every status line below the messages (older ones went above them).
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
      const lastMessageLine = window.lines.length - 1 - [...window.lines].reverse().findIndex((line) => line.messageId !== undefined);
      expect(lastMessageLine).toBeLessThan(window.lines.indexOf(statusLines()[0]));
    }
    const before = new Set(messageIds());
    const partly = await loadOlder(4);
    const match = /^loaded (\d+) older message\(s\), (\d+) did not fit/.exec(partly);
    expect(match, partly).not.toBeNull();
    const [kept, dropped] = [Number(match![1]), Number(match![2])];
    expect(kept + dropped).toBe(500);
    // What it says it kept is what the window shows, counted after its own status line went in.
    expect(messageIds().filter((id) => !before.has(id)).length).toBe(kept);
    expect(window.lines.length).toBe(windowLinesMax);
    expect(await loadOlder(5)).toBe(`window full at ${windowLinesMax} lines: no older messages fit (/close, then /query it again)`);
    expect(window.lines.length).toBe(windowLinesMax);
  });
});
