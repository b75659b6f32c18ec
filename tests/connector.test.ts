// ClientConnector: failover, exactly-once retries, push resume and typed errors, against real servers.
import net from "node:net";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { ClientConnector, EventSequencer, exhaustedError, failoverCandidates, type MachineHealth } from "../connections/connector.js";
import { loadClusterConfig, type Machine } from "../connections/consts.js";
import { ChatError, errorCodes } from "../connections/errors.js";
import type { ChatEvent, MessageView } from "../connections/schema.js";
import { seededRandom } from "../utils.js";
import { TestCluster, sleep } from "./helpers/cluster.js";

const password = "password123";

let cluster: TestCluster | undefined;
const connectors: ClientConnector[] = [];
const proxies: Proxy[] = [];

afterEach(async () => {
  for (const connector of connectors.splice(0)) connector.close();
  for (const proxy of proxies.splice(0)) proxy.close();
  await cluster?.destroy();
  cluster = undefined;
});

async function startCluster(): Promise<TestCluster> {
  cluster = await TestCluster.create({ servers: 3 });
  await cluster.startAll();
  await cluster.waitForPrimary();
  return cluster;
}

function newConnector(running: TestCluster, name: string, options: ConstructorParameters<typeof ClientConnector>[1] = {}): ClientConnector {
  const logger = pino({ level: "debug", base: { client: name } }, pino.destination({ dest: join(running.dir, `connector-${name}.log`), sync: true }));
  const connector = new ClientConnector(loadClusterConfig(running.configPath), { logger, ...options });
  connectors.push(connector);
  return connector;
}

/**
 * A 3-server cluster, a "talker" connected directly and a "watcher" that reaches the servers only
 * through TCP proxies (so a test can keep it away), both registered.
 */
async function watcherBehindProxies(): Promise<{ running: TestCluster; watcher: ClientConnector; talker: ClientConnector }> {
  const running = await startCluster();
  proxies.push(...(await Promise.all(running.config.machines.map((machine) => Proxy.start(machine.host, machine.clientPort)))));
  const proxied = { ...running.config, machines: running.config.machines.map((machine, i) => ({ ...machine, clientPort: proxies[i].port })) };
  const watcher = new ClientConnector(proxied, { logger: pino({ level: "debug" }, pino.destination({ dest: join(running.dir, "connector-watcher.log"), sync: true })) });
  connectors.push(watcher);
  const talker = newConnector(running, "talker");
  await Promise.all([watcher.connect(), talker.connect()]);
  await watcher.register("watcher", password);
  await talker.register("talker", password);
  return { running, watcher, talker };
}

async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return "ok";
  } catch (error) {
    if (error instanceof ChatError) return error.code;
    throw error;
  }
}

describe("ClientConnector with a real 3-server cluster", () => {
  it("a receiver sees every message exactly once, in order, while the primary and then the new primary are killed", async () => {
    // Goal: no push is lost, duplicated or reordered across two failovers, and every write is applied once.
    // Method: a sender sends N messages one at a time (DMs to the receiver alternating with posts in
    // #general) and we kill -9 the primary after N/3 and the new primary after 2N/3; a receiver
    // connector collects the message events and we compare them with what was sent.
    const seed = Number(process.env.CHATPLUS_SEED ?? Date.now() % 1_000_000);
    const running = await startCluster();
    const sender = newConnector(running, "sender", { random: seededRandom(seed) });
    const receiver = newConnector(running, "receiver", { random: seededRandom(seed + 1) });
    await Promise.all([sender.connect(), receiver.connect()]);
    await sender.register("sender", password);
    await receiver.register("receiver", password);
    const received: MessageView[] = [];
    const seqs: number[] = [];
    receiver.on("event", (event) => {
      if (event.event.kind !== "message" || event.event.message.from !== "sender") return;
      received.push(event.event.message);
      seqs.push(event.seq);
    });
    const states: string[] = [];
    receiver.on("state", (change) => states.push(`${change.state}@${change.serverId}`));

    const total = 200;
    const outcomes: ("ok" | "unknown")[] = [];
    const killed: number[] = [];
    for (let i = 0; i < total; i += 1) {
      if (i === Math.floor(total / 3) || i === Math.floor((2 * total) / 3)) {
        const primary = await running.waitForPrimary(15000);
        killed.push(primary);
        await running.kill(primary);
      }
      const body = `msg-${i}`;
      try {
        if (i % 2 === 0) await sender.sendDm("receiver", body);
        else await sender.post("general", body);
        outcomes.push("ok");
      } catch (error) {
        if (!(error instanceof ChatError) || error.code !== errorCodes.OUTCOME_UNKNOWN) throw new Error(`seed ${seed}: send ${i} failed: ${(error as Error).message}`);
        outcomes.push("unknown");
      }
    }
    expect(killed.length, `seed ${seed}`).toBe(2);
    const acknowledged = outcomes.filter((outcome) => outcome === "ok").length;
    await waitUntil(() => received.length >= acknowledged, 20000, `seed ${seed}: ${acknowledged} messages at the receiver (has ${received.length})`);
    await sleep(500); // a late duplicate would arrive now

    const bodies = received.map((message) => message.body);
    expect(new Set(bodies).size, `seed ${seed}: duplicates in ${bodies.join(",")}`).toBe(bodies.length);
    const expected = outcomes.map((outcome, i) => ({ body: `msg-${i}`, outcome }));
    // In send order: acknowledged ones exactly once, outcome-unknown ones at most once.
    const expectedOrder = expected.filter((item) => item.outcome === "ok" || bodies.includes(item.body)).map((item) => item.body);
    expect(bodies, `seed ${seed}`).toEqual(expectedOrder);
    for (let i = 1; i < seqs.length; i += 1) expect(seqs[i], `seed ${seed}: seq order`).toBeGreaterThan(seqs[i - 1]);
    for (const message of received) {
      const index = Number(message.body.slice(4));
      expect(message.conversation, `seed ${seed}`).toBe(index % 2 === 0 ? "@sender" : "#general");
    }
    expect(states.filter((state) => state.startsWith("failing-over")).length, `seed ${seed}: ${states.join(" ")}`).toBeGreaterThanOrEqual(2);
    // Sanity: the survivor has each message once in history too.
    const history = await receiver.history("#general", { limit: 500 });
    const posts = history.map((message) => message.body);
    expect(new Set(posts).size).toBe(posts.length);
  });

  it.each(["SIGSTOP", "SIGKILL"] as const)("a request interrupted mid-flight is applied once (primary gets %s right after the write)", async (signal) => {
    // Goal: a write whose answer is lost is retried on the new primary with the same id and applied once.
    // Method: the connector's onRequestSent hook stops or kills the primary the moment the post is
    // written; the post must still resolve, on another server, and #general must hold it exactly once.
    const running = await startCluster();
    const sends: { id: number; serverId: number; attempt: number }[] = [];
    let armed = false;
    const connector = newConnector(running, "poster", {
      hooks: {
        onRequestSent: (info) => {
          if (info.type !== "post") return;
          sends.push(info);
          if (armed) {
            armed = false;
            void running.signal(info.serverId, signal);
          }
        },
      },
    });
    await connector.connect();
    await connector.register("poster", password);
    const first = connector.serverId;
    armed = true;
    const message = await connector.post("general", "interrupted post");
    expect(message.body).toBe("interrupted post");
    expect(connector.serverId).not.toBe(first);
    expect(sends.length).toBeGreaterThanOrEqual(2);
    expect(new Set(sends.map((send) => send.id)).size, "every attempt reuses the request id").toBe(1);
    expect(sends[sends.length - 1].serverId).not.toBe(first);
    const history = await connector.history("#general");
    expect(history.filter((item) => item.body === "interrupted post").map((item) => item.id)).toEqual([message.id]);
  });

  it("the same request id sent twice with the same clientId is applied once, on the same primary and on the next one", async () => {
    // Goal: the server's record of (clientId, request id) and its response survives failover.
    // Method: a raw client posts with id 100 twice, the primary is killed, and a new raw client with
    // the same clientId re-sends id 100 to the new primary; every answer names the same message.
    const running = await startCluster();
    const primary = await running.waitForPrimary();
    const clientId = "dedup-test-client-1";
    const first = await running.client(primary);
    await first.ok("hello", { clientId });
    const registered = await first.ok("register", { username: "deduper", password });
    const answers = [];
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const frame = await first.request("post", { channel: "general", body: "only once" }, 10000, 100);
      expect(frame.type).toBe("ok");
      answers.push(frame.data!.message.id as number);
    }
    await running.waitForInSync(running.config.machines.map((machine) => machine.id).filter((id) => id !== primary).concat(primary));
    await running.kill(primary);
    const next = await running.waitForPrimary(15000);
    const second = await running.client(next);
    await second.ok("hello", { clientId });
    await second.ok("auth", { token: registered.token });
    const retried = await second.request("post", { channel: "general", body: "only once" }, 10000, 100);
    expect(retried.type, JSON.stringify(retried)).toBe("ok");
    answers.push(retried.data!.message.id as number);
    expect(new Set(answers).size).toBe(1);
    const history = await second.ok("history", { conversation: "#general" });
    expect(history.messages.filter((item: MessageView) => item.body === "only once")).toHaveLength(1);
  });

  it("with every server down, requests fail with a typed error within the bound", async () => {
    // Goal: the connector never hangs: after retryBudgetMs it reports UNAVAILABLE (not applied) or
    // OUTCOME_UNKNOWN (a write that was sent), and nothing else.
    // Method: freeze all three servers right before a post and a history read, then kill them all
    // and send another post that can never be sent.
    const running = await startCluster();
    const budgetMs = 3000;
    const slackMs = 1500;
    const connector = newConnector(running, "lonely", { retryBudgetMs: budgetMs });
    await connector.connect();
    await connector.register("lonely", password);
    const ids = running.config.machines.map((machine) => machine.id);
    for (const id of ids) void running.signal(id, "SIGSTOP");
    let started = Date.now();
    const [writeCode, readCode] = await Promise.all([codeOf(connector.post("general", "into the void")), codeOf(connector.history("#general"))]);
    const frozenElapsed = Date.now() - started;
    expect(writeCode).toBe(errorCodes.OUTCOME_UNKNOWN);
    expect(readCode).toBe(errorCodes.UNAVAILABLE);
    expect(frozenElapsed).toBeLessThan(budgetMs + slackMs);
    expect(frozenElapsed).toBeGreaterThanOrEqual(budgetMs - 50);

    for (const id of ids) await running.kill(id);
    await waitUntil(() => connector.state !== "ready", 5000, "the connector to notice");
    started = Date.now();
    const neverSentCode = await codeOf(connector.post("general", "never sent"));
    const downElapsed = Date.now() - started;
    expect(neverSentCode).toBe(errorCodes.UNAVAILABLE);
    expect(downElapsed).toBeLessThan(budgetMs + slackMs);
  });

  it("a session and its pushes survive failover: auth is replayed and missed events are fetched", async () => {
    // Goal: after a failover the connector is still logged in without the password, and events
    // committed while it was away are delivered once.
    // Method: the watcher reaches the servers through TCP proxies. We kill the primary while the
    // proxies refuse new connections, so the watcher cannot reconnect; a second client posts; then
    // the proxies open again. The watcher must get that post (from events_since) exactly once and
    // still be able to do logged-in requests.
    const { running, watcher, talker } = await watcherBehindProxies();
    const seen: ChatEvent[] = [];
    watcher.on("event", (event) => seen.push(event));
    const sessionEvents: unknown[] = [];
    watcher.on("session", (session) => sessionEvents.push(session));
    for (const proxy of proxies) proxy.refuseNew = true;
    await running.kill(await running.waitForPrimary());
    await talker.post("general", "while you were away");
    expect(watcher.state).toBe("failing-over");
    for (const proxy of proxies) proxy.refuseNew = false;
    await waitUntil(() => seen.some((event) => event.event.kind === "message" && event.event.message.body === "while you were away"), 15000, "the missed post");
    expect(watcher.session).toEqual({ username: "watcher" });
    expect(sessionEvents).toEqual([]);
    const dm = await watcher.sendDm("talker", "still logged in");
    expect(dm.from).toBe("watcher");
    await sleep(300);
    expect(seen.filter((event) => event.event.kind === "message" && event.event.message.body === "while you were away")).toHaveLength(1);
  });

  it("a resume whose events_since page is larger than 64 KiB is delivered whole", async () => {
    // Goal: server frames are not bounded by the client frame limit (docs/protocol.md §1.2). A
    // connector that read them with frameBytesMax dropped the link on every resume of a big backlog
    // and never caught up (found by the soak). Method: keep the watcher away as above while the
    // talker posts 100 messages of 2,000 characters (over 200 KB in one events_since page), then let
    // it back: it must get all of them, once each, and a history page of all 100 as well.
    const { running, watcher, talker } = await watcherBehindProxies();
    const seen: string[] = [];
    watcher.on("event", (event) => event.event.kind === "message" && seen.push(event.event.message.body));
    for (const proxy of proxies) proxy.refuseNew = true;
    await running.kill(await running.waitForPrimary());
    const bodies = Array.from({ length: 100 }, (_, i) => `${String(i).padStart(3, "0")} ${"x".repeat(1996)}`);
    for (const body of bodies) await talker.post("general", body);
    for (const proxy of proxies) proxy.refuseNew = false;
    await waitUntil(() => seen.length >= bodies.length, 20000, "the 100 missed posts");
    await sleep(200);
    expect(seen).toEqual(bodies);
    const page = await watcher.history("#general", { limit: 100 });
    expect(page.map((message) => message.body)).toEqual(bodies);
  });
});

/** A TCP forwarder that can refuse new connections, to keep one client away from the cluster. */
class Proxy {
  refuseNew = false;
  private readonly sockets = new Set<net.Socket>();
  private constructor(private readonly server: net.Server, readonly port: number) {}

  static async start(host: string, targetPort: number): Promise<Proxy> {
    let proxy: Proxy | undefined;
    const server = net.createServer((incoming) => {
      if (!proxy || proxy.refuseNew) return void incoming.destroy();
      const outgoing = net.connect({ host, port: targetPort });
      for (const socket of [incoming, outgoing]) {
        proxy.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => {
          proxy?.sockets.delete(socket);
          incoming.destroy();
          outgoing.destroy();
        });
      }
      incoming.pipe(outgoing);
      outgoing.pipe(incoming);
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", () => done()));
    proxy = new Proxy(server, (server.address() as net.AddressInfo).port);
    return proxy;
  }

  close(): void {
    this.server.close();
    for (const socket of this.sockets) socket.destroy();
  }
}

describe("connector decisions (no I/O)", () => {
  const machines: Machine[] = [1, 2, 3].map((id) => ({ id, host: "127.0.0.1", clientPort: 7000 + id, peerPort: 8000 + id }));
  const health = (entries: Partial<MachineHealth & { id: number }>[]) =>
    new Map(entries.map((entry) => [entry.id!, { up: true, role: "backup", epoch: 1, primaryId: null, rttMs: 1, ...entry } as MachineHealth]));

  it("failover tries a reported primary first, then the hint, then config order with the failed machine last", () => {
    expect(failoverCandidates(machines, new Map(), null, null)).toEqual([1, 2, 3]);
    expect(failoverCandidates(machines, health([{ id: 1 }, { id: 2 }, { id: 3 }]), 1, null)).toEqual([2, 3, 1]);
    expect(failoverCandidates(machines, health([{ id: 1, up: false }, { id: 2 }, { id: 3, role: "primary", epoch: 4 }]), 2, null)).toEqual([3, 1, 2]);
    expect(failoverCandidates(machines, health([{ id: 1, up: false, role: null }, { id: 2 }, { id: 3 }]), null, 3)).toEqual([3, 2, 1]);
    expect(failoverCandidates(machines, health([{ id: 1, role: "primary", epoch: 2 }, { id: 2, role: "primary", epoch: 3 }, { id: 3 }]), null, null)).toEqual([2, 1, 3]);
  });

  it("a write that was sent is outcome-unknown when the budget runs out; anything else is unavailable", () => {
    expect(exhaustedError({ type: "post", id: 1, write: true, unanswered: true, onWire: false }, 10).code).toBe(errorCodes.OUTCOME_UNKNOWN);
    expect(exhaustedError({ type: "post", id: 1, write: true, unanswered: false, onWire: true }, 10).code).toBe(errorCodes.OUTCOME_UNKNOWN);
    expect(exhaustedError({ type: "post", id: 1, write: true, unanswered: false, onWire: false }, 10).code).toBe(errorCodes.UNAVAILABLE);
    expect(exhaustedError({ type: "history", id: 1, write: false, unanswered: true, onWire: true }, 10).code).toBe(errorCodes.UNAVAILABLE);
  });

  it("the sequencer delivers resumed and buffered live events once, in seq order, keeping distinct events that share a seq", () => {
    const message = (seq: number, conversation = "#general"): ChatEvent => ({ seq, event: { kind: "message", message: { id: seq, conversation, from: "a", body: `m${seq}`, ts: 0 } } });
    const left: ChatEvent = { seq: 9, event: { kind: "member_left", channel: "x", user: "a" } };
    const admin: ChatEvent = { seq: 9, event: { kind: "admin_changed", channel: "x", admin: "b" } };
    const sequencer = new EventSequencer(100);
    sequencer.reset(3);
    expect(sequencer.onLive(message(2))).toEqual([]);
    expect(sequencer.onLive(message(4))).toEqual([message(4)]);
    expect(sequencer.onLive(message(4, "@a"))).toEqual([]);
    sequencer.beginResume();
    expect(sequencer.onLive(message(8))).toEqual([]);
    expect(sequencer.onLive(admin)).toEqual([]);
    expect(sequencer.onLive(message(12))).toEqual([]);
    const delivered = sequencer.endResume([message(4), message(6), message(8), left, admin], 10);
    expect(delivered).toEqual([message(6), message(8), left, admin, message(12)]);
    // One before the last delivered seq: a resume fetches seq 12 again, and the part already delivered is not delivered twice.
    expect(sequencer.resumeFrom).toBe(11);
    expect(sequencer.onLive(admin)).toEqual([]);
    expect(sequencer.onLive(message(13))).toEqual([message(13)]);
  });

  it("a link that drops between two events of one seq loses neither: the resume fetches that seq again and delivers only the missing one", () => {
    const left: ChatEvent = { seq: 9, event: { kind: "member_left", channel: "x", user: "a" } };
    const admin: ChatEvent = { seq: 9, event: { kind: "admin_changed", channel: "x", admin: "b" } };
    const sequencer = new EventSequencer(100);
    sequencer.reset(5);
    expect(sequencer.onLive(left)).toEqual([left]);
    // The link drops here; admin_changed at the same seq never arrived.
    sequencer.beginResume();
    const from = sequencer.resumeFrom;
    expect(from).toBe(8);
    const page = [left, admin].filter((event) => event.seq > from);
    expect(sequencer.onResumedPage(page)).toEqual([admin]);
    expect(sequencer.endResume([], 9)).toEqual([]);
    // After a resume that reached upTo with nothing new, the next one starts at upTo.
    expect(sequencer.resumeFrom).toBe(8);
    sequencer.beginResume();
    expect(sequencer.endResume([], 20)).toEqual([]);
    expect(sequencer.resumeFrom).toBe(20);
  });

  it("resumed pages are delivered as they come; live events buffered meanwhile follow once, in seq order", () => {
    const message = (seq: number): ChatEvent => ({ seq, event: { kind: "message", message: { id: seq, conversation: "#general", from: "a", body: `m${seq}`, ts: 0 } } });
    const sequencer = new EventSequencer(100);
    sequencer.reset(0);
    sequencer.beginResume();
    expect(sequencer.onLive(message(3))).toEqual([]);
    expect(sequencer.onLive(message(7))).toEqual([]);
    expect(sequencer.onResumedPage([message(1), message(2)])).toEqual([message(1), message(2)]);
    expect(sequencer.onResumedPage([message(3), message(4)])).toEqual([message(3), message(4)]);
    expect(sequencer.endResume([], 5)).toEqual([message(7)]);
    expect(sequencer.onLive(message(7))).toEqual([]);
  });
});

/** The frames a scripted server sends for one request (its answer and any pushes after it), or none. */
type Answer = (request: Record<string, any>, socket: net.Socket) => Record<string, unknown> | Record<string, unknown>[] | null;

/**
 * A server that speaks the frame protocol but answers as `answer` says: for the connector's
 * handling of answers no real server gives. Real TCP on 127.0.0.1, port 0.
 */
class ScriptedServer {
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;
  port = 0;

  private constructor(answer: Answer) {
    this.server = net.createServer((socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
      socket.on("error", () => {});
      let tail = "";
      socket.on("data", (data) => {
        const lines = (tail + data.toString("utf8")).split("\n");
        tail = lines.pop()!;
        for (const line of lines) {
          const reply = answer(JSON.parse(line), socket);
          for (const frame of Array.isArray(reply) ? reply : reply ? [reply] : []) socket.write(`${JSON.stringify(frame)}\n`);
        }
      });
    });
  }

  static async start(answer: Answer): Promise<ScriptedServer> {
    const scripted = new ScriptedServer(answer);
    await new Promise<void>((resolve) => scripted.server.listen(0, "127.0.0.1", resolve));
    scripted.port = (scripted.server.address() as net.AddressInfo).port;
    return scripted;
  }

  close(): void {
    this.server.close();
    for (const socket of this.sockets) socket.destroy();
  }
}

describe("ClientConnector against answers no real server gives", () => {
  const scripted: ScriptedServer[] = [];
  afterEach(() => {
    for (const server of scripted.splice(0)) server.close();
  });
  const status = (role: string, primaryId: number | null) => ({ serverId: 1, role, epoch: 3, primaryId, commitIndex: 10, lastIndex: 10, appliedIndex: 10, members: [1] });
  const quiet = pino({ level: "silent" });

  it("a backup naming a primary that is not in the client's config is not followed, and the search goes on", async () => {
    let hellos = 0;
    const server = await ScriptedServer.start((request) => {
      if (request.type === "hello") hellos += 1;
      return { v: 1, type: "ok", id: request.id, data: { ...status("backup", 99), protocol: 1 } };
    });
    scripted.push(server);
    const connector = new ClientConnector({ machines: [{ id: 1, host: "127.0.0.1", clientPort: server.port, peerPort: 1 }], clusterSecret: "unused-secret" }, { logger: quiet, retryBackoffMinMs: 5, retryBackoffMaxMs: 20 });
    connectors.push(connector);
    void connector.connect().catch(() => {});
    // Unfollowed, the hint is harmless: the connector keeps asking the one machine it knows.
    await waitUntil(() => hellos >= 3, 10000, "three discovery passes");
    expect(connector.state).toBe("connecting");
  });

  it("a login answered ok without a token rejects with CHAT_ERR_BAD_RESPONSE, and the connector keeps working", async () => {
    const server = await ScriptedServer.start((request) => {
      if (request.type === "hello" || request.type === "ping") return { v: 1, type: "ok", id: request.id, data: { ...status("primary", 1), protocol: 1 } };
      if (request.type === "login") return { v: 1, type: "ok", id: request.id, data: { username: request.username, seq: 0 } };
      if (request.type === "history") return { v: 1, type: "ok", id: request.id, data: { messages: [{ id: "not a number" }] } };
      return { v: 1, type: "error", id: request.id, code: "CHAT_ERR_NOT_LOGGED_IN", message: "log in first" };
    });
    scripted.push(server);
    const connector = new ClientConnector({ machines: [{ id: 1, host: "127.0.0.1", clientPort: server.port, peerPort: 1 }], clusterSecret: "unused-secret" }, { logger: quiet });
    connectors.push(connector);
    await connector.connect();
    await expect(connector.login("alice", password)).rejects.toMatchObject({ code: errorCodes.BAD_RESPONSE });
    await expect(connector.history("#general")).rejects.toMatchObject({ code: errorCodes.BAD_RESPONSE });
    await expect(connector.post("general", "hi")).rejects.toMatchObject({ code: errorCodes.NOT_LOGGED_IN });
  });

  it("push events of a kind it does not know (a newer server) are skipped, live and in a resume, and the link stays up", async () => {
    const message = (id: number) => ({ kind: "message", message: { id, conversation: "#general", from: "bob", body: `m${id}`, ts: 1 } });
    const event = (seq: number, body: Record<string, unknown>) => ({ v: 1, type: "event", seq, event: body });
    let auths = 0;
    let resumedAfter: number | undefined;
    const server = await ScriptedServer.start((request, socket) => {
      if (request.type === "hello" || request.type === "ping") return { v: 1, type: "ok", id: request.id, data: { ...status("primary", 1), protocol: 1 } };
      if (request.type === "login") {
        const ok = { v: 1, type: "ok", id: request.id, data: { username: "alice", token: "t1", seq: 4, unread: { conversations: [], undelivered: 0 } } };
        return [ok, event(5, { kind: "poll_created", poll: 1 }), event(6, message(6))];
      }
      if (request.type === "auth") {
        auths += 1;
        return { v: 1, type: "ok", id: request.id, data: { username: "alice", token: "t1", seq: 6, unread: { conversations: [], undelivered: 0 } } };
      }
      if (request.type === "events_since") {
        resumedAfter = request.afterSeq;
        return { v: 1, type: "ok", id: request.id, data: { events: [{ seq: 7, event: message(7) }, { seq: 8, event: { kind: "poll_closed" } }], more: false, upTo: 8 } };
      }
      if (request.type === "post") {
        // The link drops after this answer, so the connector reconnects and resumes.
        setTimeout(() => socket.destroy(), 20);
        return { v: 1, type: "ok", id: request.id, data: { message: message(9).message } };
      }
      return { v: 1, type: "error", id: request.id, code: "CHAT_ERR_BAD_REQUEST", message: "not scripted" };
    });
    scripted.push(server);
    const connector = new ClientConnector({ machines: [{ id: 1, host: "127.0.0.1", clientPort: server.port, peerPort: 1 }], clusterSecret: "unused-secret" }, { logger: quiet, retryBackoffMinMs: 5, retryBackoffMaxMs: 20 });
    connectors.push(connector);
    const seen: number[] = [];
    connector.on("event", (pushed: ChatEvent) => seen.push(pushed.seq));
    await connector.connect();
    await connector.login("alice", password);
    await waitUntil(() => seen.includes(6), 5000, "the known live event");
    expect(seen).toEqual([6]);
    expect(connector.state).toBe("ready");
    await connector.post("general", "hi");
    await waitUntil(() => seen.includes(7), 10000, "the known event of the resume");
    expect(resumedAfter).toBe(5);
    await sleep(200);
    // One reconnect, one resume: the unknown events neither closed the link nor came back.
    expect(auths).toBe(1);
    expect(seen).toEqual([6, 7]);
    expect(connector.state).toBe("ready");
  });
});
