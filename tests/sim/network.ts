// The simulated network between servers, modelled on connections/peer.ts: one connection per pair,
// dialed by the server earlier in the machine list, with backoff; a link is up on a side once its
// handshake finishes there; a restarted peer's new link replaces the old one; a side sees the link
// go down when the connection closes.
//
// Modes:
//   tcp        per-connection FIFO, no loss or duplication; connections close only when a process dies.
//   tcp-drops  tcp, plus random connection drops (TCP's only way of losing data): both sides see
//              onPeerDown, in-flight data after a random point is lost, and the dialer reconnects.
//   lossy      harsher than TCP: each message may be dropped, duplicated, or delayed past later ones.
//   partition  tcp-drops plus cut links (one or both directions) that silently drop traffic and block
//              reconnection. Outside the safety fault model: only observed, see harness.ts.
import { peerProbeAttemptsMax, peerProbeIntervalMs } from "../../connections/consts.js";
import type { PeerMessage } from "../../core/messages.js";
import { backoffDelayMs } from "../../utils.js";
import type { Rng } from "./rng.js";
import type { SimServer } from "./server.js";

export type NetworkMode = "tcp" | "tcp-drops" | "lossy" | "partition";

type Direction = { sent: number; delivered: number; limit: number; lastAt: number };

class Connection {
  closed = false;
  readonly directions = new Map<number, Direction>();
  constructor(
    readonly generation: number,
    readonly dialer: number,
    readonly acceptor: number,
  ) {
    this.directions.set(dialer, { sent: 0, delivered: 0, limit: Infinity, lastAt: 0 });
    this.directions.set(acceptor, { sent: 0, delivered: 0, limit: Infinity, lastAt: 0 });
  }
  other(id: number): number {
    return id === this.dialer ? this.acceptor : this.dialer;
  }
}

export interface NetworkHost {
  readonly now: number;
  at(time: number, run: () => void): void;
  server(id: number): SimServer;
  trace(text: string): void;
}

export const dialBackoffMinMs = 20;
export const dialBackoffMaxMs = 500;

export class SimNetwork {
  private generation = 0;
  private readonly connections = new Map<string, Connection>();
  /** Pending dial timer per pair, tagged with the dialer's incarnation. */
  private readonly dialTimers = new Map<string, number>();
  private readonly dialAttempts = new Map<string, number>();
  /** Cut directions "from>to" (partition mode only). */
  private readonly cuts = new Set<string>();
  messagesSent = 0;
  messagesDropped = 0;

  constructor(
    readonly mode: NetworkMode,
    private readonly order: number[],
    private readonly rng: Rng,
    private readonly host: NetworkHost,
  ) {}

  private pairKey(a: number, b: number): string {
    return this.dials(a, b) ? `${a}-${b}` : `${b}-${a}`;
  }

  private dials(a: number, b: number): boolean {
    return this.order.indexOf(a) < this.order.indexOf(b);
  }

  private isCut(from: number, to: number): boolean {
    return this.cuts.size > 0 && this.cuts.has(`${from}>${to}`);
  }

  // ---- dialing -----------------------------------------------------------------------------

  /** A server (re)started: it dials every later peer at once (PeerLinks.listen). */
  serverStarted(id: number): void {
    for (const peer of this.order) {
      if (peer === id || !this.dials(id, peer)) continue;
      this.dialAttempts.set(this.pairKey(id, peer), 0);
      this.dialTimers.delete(this.pairKey(id, peer));
      this.dial(id, peer);
    }
  }

  private scheduleDial(dialer: number, peer: number): void {
    const key = this.pairKey(dialer, peer);
    const server = this.host.server(dialer);
    if (!server.up || this.dialTimers.get(key) === server.incarnation) return;
    const attempt = (this.dialAttempts.get(key) ?? 0) + 1;
    this.dialAttempts.set(key, attempt);
    const incarnation = server.incarnation;
    this.dialTimers.set(key, incarnation);
    const delay = backoffDelayMs(attempt, dialBackoffMinMs, dialBackoffMaxMs, this.rng.next);
    this.host.at(this.host.now + delay, () => {
      if (server.incarnation !== incarnation) return;
      // A frozen process's timers do not fire; the dial happens when it resumes.
      server.handle("dial timer", () => {
        if (this.dialTimers.get(key) === incarnation) this.dialTimers.delete(key);
        this.dial(dialer, peer);
      });
    });
  }

  private dial(dialer: number, acceptor: number): void {
    const from = this.host.server(dialer);
    const to = this.host.server(acceptor);
    if (!from.up || from.links.has(acceptor)) return;
    const key = this.pairKey(dialer, acceptor);
    const current = this.connections.get(key);
    if (current && !current.closed) return; // a handshake is in progress
    if (!to.up || to.frozen || this.isCut(dialer, acceptor) || this.isCut(acceptor, dialer)) {
      this.scheduleDial(dialer, acceptor);
      return;
    }
    const connection = new Connection(++this.generation, dialer, acceptor);
    this.connections.set(key, connection);
    // hello / challenge / auth: the acceptor registers the link first, then sends welcome.
    this.host.at(this.host.now + this.rng.int(1, 3), () => {
      if (connection.closed) return;
      to.handle(`link up ${dialer} (accepted #${connection.generation})`, () => {
        if (connection.closed) return;
        this.sendWelcome(connection);
        to.linkUp(dialer, connection.generation);
      });
    });
  }

  private sendWelcome(connection: Connection): void {
    const direction = connection.directions.get(connection.acceptor)!;
    const at = Math.max(this.host.now + this.rng.int(1, 3), direction.lastAt);
    direction.lastAt = at;
    direction.sent += 1;
    const seq = direction.sent;
    const dialer = this.host.server(connection.dialer);
    this.host.at(at, () => {
      if (connection.closed && seq > direction.limit) return;
      direction.delivered = Math.max(direction.delivered, seq);
      if (connection.closed) return;
      dialer.handle(`link up ${connection.acceptor} (dialed #${connection.generation})`, () => {
        if (connection.closed) return;
        this.dialAttempts.set(this.pairKey(connection.dialer, connection.acceptor), 0);
        dialer.linkUp(connection.acceptor, connection.generation);
      });
    });
  }

  // ---- messages ----------------------------------------------------------------------------

  send(from: number, to: number, message: PeerMessage): void {
    const sender = this.host.server(from);
    const generation = sender.links.get(to);
    if (generation === undefined) return; // PeerLinks.send: no link, nothing sent
    this.messagesSent += 1;
    const connection = this.connections.get(this.pairKey(from, to));
    if (!connection || connection.generation !== generation || connection.closed) {
      this.messagesDropped += 1; // written to a socket that is already closed
      return;
    }
    if (this.isCut(from, to)) {
      this.messagesDropped += 1;
      return;
    }
    const direction = connection.directions.get(from)!;
    if (this.mode === "lossy") {
      if (this.rng.chance(0.05)) {
        this.messagesDropped += 1;
        return;
      }
      const copies = this.rng.chance(0.03) ? 2 : 1;
      direction.sent += 1;
      for (let copy = 0; copy < copies; copy += 1) this.schedule(connection, from, to, message, this.host.now + this.rng.int(1, 40), direction.sent);
      return;
    }
    const delay = this.rng.chance(0.05) ? this.rng.int(5, 40) : this.rng.int(1, 4);
    const at = Math.max(this.host.now + delay, direction.lastAt);
    direction.lastAt = at;
    direction.sent += 1;
    this.schedule(connection, from, to, message, at, direction.sent);
  }

  private schedule(connection: Connection, from: number, to: number, message: PeerMessage, at: number, seq: number): void {
    const direction = connection.directions.get(from)!;
    const receiver = this.host.server(to);
    this.host.at(at, () => {
      if (connection.closed && seq > direction.limit) {
        this.messagesDropped += 1;
        return;
      }
      direction.delivered = Math.max(direction.delivered, seq);
      receiver.handle(`<-${from} ${messageLabel(message)}`, () => receiver.message(from, connection.generation, message));
    });
  }

  // ---- faults ------------------------------------------------------------------------------

  /** Closes a connection; each side still running notices after a delay and the dialer redials. */
  private close(connection: Connection, crashed: number | null, detectMs: [number, number]): void {
    if (connection.closed) return;
    connection.closed = true;
    for (const [from, direction] of connection.directions) {
      // Bytes already sent may still arrive before the FIN/RST (up to a random point), never after it.
      direction.limit = from === crashed || crashed === null ? this.rng.int(direction.delivered, direction.sent) : direction.delivered;
    }
    for (const side of [connection.dialer, connection.acceptor]) {
      if (side === crashed) continue;
      const server = this.host.server(side);
      if (!server.up) continue;
      const peer = connection.other(side);
      const incoming = connection.directions.get(peer)!;
      const at = Math.max(this.host.now + this.rng.int(detectMs[0], detectMs[1]), incoming.lastAt);
      const incarnation = server.incarnation;
      this.host.at(at, () => {
        if (server.incarnation !== incarnation) return;
        server.handle(`link down ${peer} (#${connection.generation})`, () => {
          server.linkDown(peer, connection.generation);
          if (this.dials(side, peer)) this.scheduleDial(side, peer);
          this.probe(side, peer, 0);
        });
      });
    }
  }

  /**
   * PeerLinks.probe: after a link drops, knock on the peer's port every peerProbeIntervalMs until the
   * link is back, at most peerProbeAttemptsMax times. Nothing listening (the process is down) is a
   * refusal; a frozen process's kernel still accepts, and a cut link times out.
   */
  private probe(side: number, peer: number, attempt: number): void {
    const server = this.host.server(side);
    if (!server.up || server.links.has(peer) || attempt >= peerProbeAttemptsMax) return;
    const incarnation = server.incarnation;
    this.host.at(this.host.now + this.rng.int(1, 3), () => {
      if (server.incarnation !== incarnation || !server.up) return;
      const target = this.host.server(peer);
      if (!target.up && !this.isCut(side, peer) && !this.isCut(peer, side)) {
        server.handle(`probe of ${peer} refused`, () => server.refused(peer));
        return;
      }
      this.host.at(this.host.now + peerProbeIntervalMs, () => {
        if (server.incarnation === incarnation) this.probe(side, peer, attempt + 1);
      });
    });
  }

  /** A process died: its connections close (kill -9: the kernel sends FIN/RST at once). */
  serverCrashed(id: number): void {
    for (const connection of this.connections.values()) {
      if (connection.dialer === id || connection.acceptor === id) this.close(connection, id, [1, 5]);
    }
  }

  /** A connection fails on its own (tcp-drops, lossy, partition modes). */
  dropLink(a: number, b: number): boolean {
    const connection = this.connections.get(this.pairKey(a, b));
    if (!connection || connection.closed) return false;
    this.host.trace(`net: connection ${a}-${b} #${connection.generation} drops`);
    this.close(connection, null, [1, 50]);
    return true;
  }

  cut(from: number, to: number, bothWays: boolean, closeLink: boolean): void {
    this.cuts.add(`${from}>${to}`);
    if (bothWays) this.cuts.add(`${to}>${from}`);
    this.host.trace(`net: CUT ${from}${bothWays ? "<" : ""}->${to}${closeLink ? " (connection closes)" : ""}`);
    if (closeLink) this.dropLink(from, to);
  }

  healCuts(): void {
    if (this.cuts.size === 0) return;
    this.cuts.clear();
    this.host.trace("net: all cuts healed");
  }
}

function messageLabel(message: PeerMessage): string {
  if (message.t === "heartbeat") return `hb r${message.round} e${message.status.epoch}`;
  if (message.t === "append") return `append e${message.epoch} prev${message.prevIndex} n${message.entries.length} ci${message.commitIndex}`;
  return message.t;
}
