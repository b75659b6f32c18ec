// Authenticated TCP links between servers, one per pair.
// Dialing order is deterministic: the server earlier in the machine list dials the later one, so two
// servers never race to open duplicate links. A link is usable only after a mutual HMAC challenge over
// the shared cluster secret, so a client cannot pose as a replica.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import net from "node:net";
import type { Logger } from "pino";
import { z } from "zod";
import { parsePeerMessage, type PeerMessage } from "../core/messages.js";
import { peerDialBackoffMaxMs, peerDialBackoffMinMs, peerFrameBytesMax, peerProbeAttemptsMax, peerProbeIntervalMs, type Machine } from "./consts.js";
import { encodeFrame, LineReader } from "./framing.js";
import { backoffDelayMs } from "../utils.js";

const Handshake = z.discriminatedUnion("t", [
  z.object({ t: z.literal("hello"), id: z.number().int(), nonce: z.string().length(32) }),
  z.object({ t: z.literal("challenge"), id: z.number().int(), nonce: z.string().length(32), proof: z.string() }),
  z.object({ t: z.literal("auth"), proof: z.string() }),
  z.object({ t: z.literal("welcome") }),
]);

export type PeerEvents = {
  onUp: (peer: number) => void;
  onDown: (peer: number) => void;
  /** Nothing listens on the peer's port any more (connection refused): its process is gone. */
  onRefused: (peer: number) => void;
  onMessage: (peer: number, message: PeerMessage) => void;
  /** Every message of one socket read has been delivered (onMessage ran for each). */
  onReadDone: () => void;
};

type Link = { socket: net.Socket; peer: number };

export class PeerLinks {
  private server: net.Server | undefined;
  private readonly links = new Map<number, Link>();
  private readonly dialTimers = new Map<number, NodeJS.Timeout>();
  private readonly dialAttempts = new Map<number, number>();
  private closed = false;
  private readonly order: number[];

  constructor(
    private readonly self: Machine,
    private readonly machines: Machine[],
    private readonly secret: string,
    private readonly events: PeerEvents,
    private readonly log: Logger,
  ) {
    this.order = machines.map((machine) => machine.id);
  }

  async listen(): Promise<void> {
    this.server = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(this.self.peerPort, this.self.host, () => resolve());
    });
    for (const machine of this.machines) if (this.dials(machine.id)) this.dial(machine);
  }

  send(peer: number, message: PeerMessage): boolean {
    const link = this.links.get(peer);
    if (!link) return false;
    link.socket.write(encodePeerFrame(message));
    return true;
  }

  /** Bytes queued on a link and not yet accepted by the kernel (backpressure signal). */
  queuedBytes(peer: number): number {
    return this.links.get(peer)?.socket.writableLength ?? 0;
  }

  isUp(peer: number): boolean {
    return this.links.has(peer);
  }

  close(): void {
    this.closed = true;
    for (const timer of this.dialTimers.values()) clearTimeout(timer);
    for (const link of this.links.values()) link.socket.destroy();
    this.server?.close();
  }

  private dials(peer: number): boolean {
    return this.order.indexOf(this.self.id) < this.order.indexOf(peer);
  }

  private proof(kind: "accept" | "dial", nonce: string, from: number, to: number): string {
    return createHmac("sha256", this.secret).update(`${kind}|${nonce}|${from}|${to}`).digest("hex");
  }

  private scheduleDial(machine: Machine): void {
    if (this.closed || this.dialTimers.has(machine.id)) return;
    const attempt = (this.dialAttempts.get(machine.id) ?? 0) + 1;
    this.dialAttempts.set(machine.id, attempt);
    const delay = backoffDelayMs(attempt, peerDialBackoffMinMs, peerDialBackoffMaxMs, Math.random);
    this.dialTimers.set(
      machine.id,
      setTimeout(() => {
        this.dialTimers.delete(machine.id);
        this.dial(machine);
      }, delay),
    );
  }

  private dial(machine: Machine): void {
    if (this.closed || this.links.has(machine.id)) return;
    const socket = net.connect({ host: machine.host, port: machine.peerPort });
    socket.setNoDelay(true);
    const nonce = randomBytes(16).toString("hex");
    let authenticated = false;
    const reader = new LineReader(peerFrameBytesMax, {
      onFrame: (line) => {
        if (authenticated) return this.deliver(machine.id, line, socket);
        const message = parseHandshake(line);
        if (message?.t === "challenge" && message.id === machine.id && safeEqual(message.proof, this.proof("accept", nonce, machine.id, this.self.id))) {
          socket.write(encodeFrame({ t: "auth", proof: this.proof("dial", message.nonce, this.self.id, machine.id) }));
          return;
        }
        if (message?.t === "welcome") {
          authenticated = true;
          this.dialAttempts.set(machine.id, 0);
          this.linkUp(machine.id, socket);
          return;
        }
        this.log.warn({ peer: machine.id }, "peer failed authentication");
        socket.destroy();
      },
      onOversize: () => socket.destroy(),
    });
    socket.on("connect", () => socket.write(encodeFrame({ t: "hello", id: this.self.id, nonce })));
    socket.on("data", (data) => {
      reader.push(data);
      this.events.onReadDone();
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      if (authenticated) this.linkDown(machine.id, socket);
      this.scheduleDial(machine);
    });
  }

  private accept(socket: net.Socket): void {
    socket.setNoDelay(true);
    const nonce = randomBytes(16).toString("hex");
    let peer: number | undefined;
    let authenticated = false;
    const handshakeTimer = setTimeout(() => {
      if (!authenticated) socket.destroy();
    }, 5000);
    const reader = new LineReader(peerFrameBytesMax, {
      onFrame: (line) => {
        if (authenticated) return this.deliver(peer!, line, socket);
        const message = parseHandshake(line);
        if (message?.t === "hello" && peer === undefined) {
          const known = this.machines.some((machine) => machine.id === message.id) && !this.dials(message.id) && message.id !== this.self.id;
          if (!known) return void socket.destroy();
          peer = message.id;
          socket.write(encodeFrame({ t: "challenge", id: this.self.id, nonce, proof: this.proof("accept", message.nonce, this.self.id, peer) }));
          return;
        }
        if (message?.t === "auth" && peer !== undefined && safeEqual(message.proof, this.proof("dial", nonce, peer, this.self.id))) {
          authenticated = true;
          clearTimeout(handshakeTimer);
          socket.write(encodeFrame({ t: "welcome" }));
          this.linkUp(peer, socket);
          return;
        }
        this.log.warn({ peer }, "peer failed authentication");
        socket.destroy();
      },
      onOversize: () => socket.destroy(),
    });
    socket.on("data", (data) => {
      reader.push(data);
      this.events.onReadDone();
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(handshakeTimer);
      if (authenticated && peer !== undefined) this.linkDown(peer, socket);
    });
  }

  private linkUp(peer: number, socket: net.Socket): void {
    const existing = this.links.get(peer);
    if (existing) {
      // The peer restarted and dialed again: the new link replaces the old one.
      this.links.delete(peer);
      existing.socket.destroy();
      this.events.onDown(peer);
    }
    this.links.set(peer, { socket, peer });
    this.log.info({ peer }, "peer link up");
    this.events.onUp(peer);
  }

  private linkDown(peer: number, socket: net.Socket): void {
    if (this.links.get(peer)?.socket !== socket) return;
    this.links.delete(peer);
    this.log.info({ peer }, "peer link down");
    this.events.onDown(peer);
    this.probe(peer, 0);
  }

  /**
   * After a link drops, knock on the peer's port until the link is back: a refused connection proves
   * its process is gone (a crash). An accepted one proves nothing yet: a process being killed closes
   * its links before its listening socket, so the first knock after the drop can still be accepted.
   */
  private probe(peer: number, attempt: number): void {
    const machine = this.machines.find((candidate) => candidate.id === peer);
    if (!machine || this.closed || this.links.has(peer) || attempt >= peerProbeAttemptsMax) return;
    const socket = net.connect({ host: machine.host, port: machine.peerPort });
    const timer = setTimeout(() => socket.destroy(), peerProbeIntervalMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.destroy();
      setTimeout(() => this.probe(peer, attempt + 1), peerProbeIntervalMs);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (error.code === "ECONNREFUSED" && !this.links.has(peer)) this.events.onRefused(peer);
      else setTimeout(() => this.probe(peer, attempt + 1), peerProbeIntervalMs);
    });
  }

  private deliver(peer: number, line: string, socket: net.Socket): void {
    if (this.links.get(peer)?.socket !== socket) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      this.log.error({ peer }, "peer sent malformed JSON; dropping link");
      return void socket.destroy();
    }
    const message = parsePeerMessage(parsed);
    if (!message.success) {
      this.log.error({ peer, problem: message.error }, "peer sent an invalid message; dropping link");
      return void socket.destroy();
    }
    this.events.onMessage(peer, message.data);
  }
}

/** Entries JSON by array identity: when two backups get the same range, it is serialized once. */
const entriesJson = new WeakMap<object, string>();

function encodePeerFrame(message: PeerMessage): string {
  if (message.t !== "append") return encodeFrame(message);
  let entries = entriesJson.get(message.entries);
  if (entries === undefined) {
    entries = JSON.stringify(message.entries);
    entriesJson.set(message.entries, entries);
  }
  const { entries: _entries, ...head } = message;
  void _entries;
  return `${JSON.stringify(head).slice(0, -1)},"entries":${entries}}\n`;
}

function parseHandshake(line: string): z.infer<typeof Handshake> | undefined {
  try {
    const result = Handshake.safeParse(JSON.parse(line));
    return result.success ? result.data : undefined;
  } catch {
    return undefined;
  }
}

function safeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}
