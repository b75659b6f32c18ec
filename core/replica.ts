// The replication core: every decision about who is primary, what is committed, when to fail over
// and what a restarted server must fetch. It does no I/O. The shell (connections/manager.ts) or the
// simulator (tests/sim) feeds it events with the current monotonic time and carries out the actions
// it returns, in order. Ordering rules the shell must keep:
//   - carry out `promise` and `persist` durably before any later `send` in the same action list;
//   - call onPersisted after a `persist` completes, and onLocalPersisted after the primary's own commit;
//   - call observe(now) (any entry point does it) before acting on anything that arrived.
// The protocol and its correctness argument are in docs/architecture.md.
import { assert } from "../connections/errors.js";
import type { ConfigCommand, LogEntry } from "../store/commands.js";
import type { PeerMessage, PeerMessageOf, Status } from "./messages.js";

export type NodeId = number;
export type Role = Status["role"];

/** Read access to the local log; writes happen through actions. */
export interface LogView {
  readonly lastIndex: number;
  readonly lastEpoch: number;
  epochAt(index: number): number;
  entries(from: number, to: number): LogEntry[];
  lastIndexAtOrBeforeEpoch(epoch: number): number;
  lastConfig(): { index: number; epoch: number; config: ConfigCommand } | undefined;
}

export type Action =
  | { type: "send"; to: NodeId; message: PeerMessage }
  /** Append and apply these entries durably, then call onPersisted. */
  | { type: "persist"; entries: LogEntry[] }
  /** Drop every entry after afterIndex and rebuild state from the rest. */
  | { type: "truncate"; afterIndex: number }
  /** Durably record the promised epoch before sending anything else. */
  | { type: "promise"; epoch: number }
  /** Primary only: append this config entry through the write path at the current epoch. */
  | { type: "propose_config"; config: ConfigCommand; reason: string }
  /** Entries up to index are committed: answer their clients, push their events. */
  | { type: "commit"; index: number }
  | { type: "role"; role: Role; epoch: number; serving: boolean; reason: string }
  /** The process was frozen: drop client connections and pending requests; it is now recovering. */
  | { type: "frozen"; gapMs: number };

export type Timing = {
  heartbeatIntervalMs: number;
  peerTimeoutMs: number;
  freezeDetectMs: number;
  leaseMs: number;
  takeoverWaitMs: number;
  /** A member we cannot reach counts as dead only after this long without contact (links take time to (re)dial). */
  unreachableGraceMs: number;
  batchEntriesMax: number;
  inflightEntriesMax: number;
};

export type ReplicaOptions = {
  id: NodeId;
  /** Every machine id, in consts (failover) order. */
  order: NodeId[];
  /** Members of the implicit first config, for a cluster whose logs are all empty. */
  initialMembers: NodeId[];
  log: LogView;
  promisedEpoch: number;
  timing: Timing;
  /** Deterministic randomness (jitter); the simulator seeds it. */
  random: () => number;
  now: number;
};

type PeerState = {
  linkUp: boolean;
  lastHeard: number;
  status?: Status;
  statusAt: number;
  /** A connection to its port was refused since we last heard it: no process is listening there. */
  refused: boolean;
};
type Follower = {
  nextIndex: number;
  ackIndex: number;
  member: boolean;
  lastSend: number;
  reconfirm: boolean;
  /** When its ack last advanced, or when it was last fully caught up. */
  lastProgress: number;
  /** After a retransmission, send one batch only until an ack shows the follower is reading again. */
  probing: boolean;
};
type Candidacy = {
  epoch: number;
  path: "continuous" | "restart";
  waitFor: Set<NodeId>;
  oks: Map<NodeId, PeerMessageOf<"prepare_ok">>;
  phase: "collect" | "fetch";
  fetchFrom?: NodeId;
  fetchTarget?: number;
  members: NodeId[];
  deadline: number;
  /** The primary whose loss started this candidacy. */
  lost: NodeId | null;
};
type Config = { epoch: number; index: number; primary: NodeId | null; members: NodeId[] };

/** pendingConfigIndex of a new primary whose takeover config the shell has not proposed yet. */
const takeoverConfigNotProposed = Number.MAX_SAFE_INTEGER;

export class Replica {
  readonly id: NodeId;
  private readonly order: NodeId[];
  private readonly initialMembers: NodeId[];
  private readonly log: LogView;
  private readonly timing: Timing;
  private readonly random: () => number;

  private promised: number;
  private role: Role = "recovering";
  private serving = false;
  private eligible = false;
  /** Set when a config entry naming us arrives after we last lost eligibility: only that may restore it. */
  private freshConfigSeen = false;
  private commitIndex = 0;
  private lastNow: number;
  private readonly peers = new Map<NodeId, PeerState>();

  // backup / recovering
  private primaryId: NodeId | null = null;
  private lastHeardPrimary = 0;
  private leasePromisedUntil = 0;
  private joinSentAt = -Infinity;
  private candidacyNotBefore = 0;

  // primary
  private followers = new Map<NodeId, Follower>();
  private persistedIndex = 0;
  private pendingConfigIndex = 0;
  private round = 0;
  private readonly roundSentAt = new Map<number, number>();
  private readonly ackRound = new Map<NodeId, number>();
  private leaseExpiry = 0;
  private lastHeartbeatAt = -Infinity;

  private candidacy: Candidacy | null = null;
  /** Highest epoch seen in any message: a new candidacy must go above it. */
  private highestEpochSeen = 0;
  /** When we last (re)started recovering or became eligible: contact is measured from here. */
  private contactBaseline: number;
  /** Log prefix known to match the current primary's in this epoch (verified by an append's prev check). */
  private matchedIndex = 0;
  private matchedEpoch = -1;
  /** When the primary last sent us an append (heartbeats do not count: they stream nothing). */
  private lastAppendAt = -Infinity;
  /** Join bookkeeping: whom we asked, and whether it has answered with an append or a truncate. */
  private joinTarget: NodeId | null = null;
  private joinAnswered = false;

  constructor(options: ReplicaOptions) {
    this.id = options.id;
    this.order = options.order;
    this.initialMembers = options.initialMembers;
    this.log = options.log;
    this.timing = options.timing;
    this.random = options.random;
    this.promised = Math.max(options.promisedEpoch, options.log.lastEpoch);
    this.lastNow = options.now;
    this.contactBaseline = options.now;
    this.highestEpochSeen = this.promised;
    this.persistedIndex = options.log.lastIndex;
    for (const peer of this.order) if (peer !== this.id) this.peers.set(peer, { linkUp: false, lastHeard: -Infinity, statusAt: -Infinity, refused: false });
    assert(this.order.includes(this.id), `server ${this.id} is in the machine list`);
  }

  // ---- queries -------------------------------------------------------------

  status(): Status {
    const config = this.config();
    return {
      epoch: this.promised,
      configEpoch: config.epoch,
      configIndex: config.index,
      configPrimary: config.primary,
      members: config.members,
      role: this.role,
      serving: this.serving,
      eligible: this.eligible,
      lastIndex: this.log.lastIndex,
      lastEpoch: this.log.lastEpoch,
      commitIndex: this.commitIndex,
    };
  }

  get epoch(): number {
    return this.promised;
  }
  get committed(): number {
    return this.commitIndex;
  }
  get currentRole(): Role {
    return this.role;
  }

  /** The primary this server believes serves clients, if any. */
  knownPrimary(): NodeId | null {
    if (this.role === "primary" && this.serving) return this.id;
    let best: { id: NodeId; epoch: number } | null = null;
    for (const [id, peer] of this.peers) {
      if (!this.isAlive(peer) || !peer.status) continue;
      if (peer.status.role === "primary" && peer.status.serving && (!best || peer.status.epoch > best.epoch)) best = { id, epoch: peer.status.epoch };
    }
    return best?.id ?? null;
  }

  canAcceptWrites(): boolean {
    return this.role === "primary" && this.serving;
  }

  /** Reads are linearizable only under a lease every in-sync backup renewed recently. */
  canServeReads(now: number): boolean {
    if (!this.canAcceptWrites()) return false;
    if (now - this.lastNow > this.timing.freezeDetectMs) return false;
    return this.config().members.length === 1 || now < this.leaseExpiry;
  }

  // ---- events --------------------------------------------------------------

  /** Every entry point calls this first. A late timer means we were frozen: behave as restarted. */
  observe(now: number): Action[] {
    const gap = now - this.lastNow;
    this.lastNow = Math.max(this.lastNow, now);
    if (gap <= this.timing.freezeDetectMs) return [];
    // Nothing can have happened while we were frozen if no other member of our config could reach
    // us before it (no link up; the events that arrived since are not processed yet): a replacement
    // or a removal needs a live member to do it, and a restarted one must reach us to elect. This
    // covers a primary alone in its in-sync set, and a lone survivor waiting out its dead peers.
    const config = this.config();
    const othersReachable = config.members.some((id) => id !== this.id && this.peers.get(id)?.linkUp === true);
    if (!othersReachable && config.members.includes(this.id) && (this.eligible || (this.role === "primary" && this.serving))) return [];
    const actions: Action[] = [{ type: "frozen", gapMs: gap }];
    this.loseEligibility();
    this.joinSentAt = -Infinity;
    this.contactBaseline = now;
    this.matchedIndex = 0;
    this.candidacy = null;
    this.followers.clear();
    this.primaryId = null;
    this.setRole(actions, "recovering", false, `frozen for ${gap} ms`);
    // Anything we heard before the freeze is too old to act on.
    for (const peer of this.peers.values()) {
      peer.lastHeard = -Infinity;
      peer.status = undefined;
    }
    return actions;
  }

  tick(now: number): Action[] {
    const actions = this.observe(now);
    if (now - this.lastHeartbeatAt >= this.timing.heartbeatIntervalMs) {
      this.lastHeartbeatAt = now;
      this.sendHeartbeats(actions, now);
    }
    if (this.candidacy) this.candidacyTick(actions, now);
    else if (this.role === "primary") this.primaryTick(actions, now);
    else if (this.role === "backup") this.backupTick(actions, now);
    else if (this.role === "recovering") this.recoveringTick(actions, now);
    if (this.role === "primary") this.replicate(actions, now);
    return actions;
  }

  onPeerUp(peer: NodeId, now: number): Action[] {
    const actions = this.observe(now);
    const state = this.peers.get(peer);
    if (!state) return actions;
    state.linkUp = true;
    state.lastHeard = now;
    state.refused = false;
    this.sendStatusTo(actions, peer);
    // A candidate waiting on this member asks it now that it can.
    const candidacy = this.candidacy;
    if (candidacy?.phase === "collect" && candidacy.waitFor.has(peer) && !candidacy.oks.has(peer)) {
      const config = this.config();
      actions.push({ type: "send", to: peer, message: { t: "prepare", epoch: candidacy.epoch, configEpoch: config.epoch, configIndex: config.index } });
    }
    return actions;
  }

  onPeerDown(peer: NodeId, now: number): Action[] {
    const actions = this.observe(now);
    const state = this.peers.get(peer);
    if (!state) return actions;
    state.linkUp = false;
    state.status = undefined;
    const follower = this.followers.get(peer);
    // Whatever was in flight on the old link is lost; resend from what was acknowledged.
    if (follower) follower.nextIndex = follower.ackIndex + 1;
    return actions;
  }

  /** The shell found nothing listening on the peer's port (connection refused): that process is gone. */
  onPeerRefused(peer: NodeId, now: number): Action[] {
    const actions = this.observe(now);
    const state = this.peers.get(peer);
    if (state && !state.linkUp) state.refused = true;
    return actions;
  }

  onMessage(from: NodeId, message: PeerMessage, now: number): Action[] {
    const actions = this.observe(now);
    const peer = this.peers.get(from);
    if (!peer) return actions;
    peer.lastHeard = now;
    peer.refused = false;
    this.highestEpochSeen = Math.max(this.highestEpochSeen, epochIn(message));
    switch (message.t) {
      case "heartbeat":
        this.onHeartbeat(actions, from, message, now);
        break;
      case "heartbeat_ack":
        this.onHeartbeatAck(from, message);
        break;
      case "append":
        this.onAppend(actions, from, message, now);
        break;
      case "append_ack":
        this.onAppendAck(actions, from, message, now);
        break;
      case "append_nack":
        this.onAppendNack(actions, from, message, now);
        break;
      case "join":
        this.onJoin(actions, from, message, now);
        break;
      case "join_truncate":
        this.onJoinTruncate(actions, from, message);
        break;
      case "prepare":
        this.onPrepare(actions, from, message, now);
        break;
      case "prepare_ok":
        this.onPrepareOk(actions, from, message, now);
        break;
      case "prepare_reject":
        this.onPrepareReject(actions, from, message, now);
        break;
      case "fetch":
        this.onFetch(actions, from, message);
        break;
      case "fetch_reply":
        this.onFetchReply(actions, from, message, now);
        break;
      case "stale":
        this.onStale(actions, from, message, now);
        break;
    }
    return actions;
  }

  /** Backup/candidate: a `persist` action completed; the log now ends at lastIndex. */
  onPersisted(lastIndex: number, now: number): Action[] {
    const actions = this.observe(now);
    if (this.candidacy?.phase === "fetch") {
      this.continueFetch(actions, now);
      return actions;
    }
    if (this.primaryId !== null && this.role !== "primary") {
      this.updateEligibility(actions);
      actions.push({ type: "send", to: this.primaryId, message: { t: "append_ack", epoch: this.promised, lastIndex } });
    }
    return actions;
  }

  /** Primary: entries were written in the open local transaction; ship them now, before our own fsync finishes. */
  onLocalProposed(entries: LogEntry[], now: number): Action[] {
    const actions: Action[] = [];
    assert(this.role === "primary", "only a primary proposes");
    for (const entry of entries) {
      assert(entry.epoch === this.promised, `proposed entry ${entry.index} carries the current epoch`);
      if (entry.command.op === "config") this.pendingConfigIndex = entry.index;
    }
    this.replicate(actions, now);
    return actions;
  }

  /** Primary: the local transaction holding entries up to lastIndex is durable. */
  onLocalPersisted(lastIndex: number, now: number): Action[] {
    const actions = this.observe(now);
    if (this.role !== "primary") return actions;
    this.persistedIndex = Math.max(this.persistedIndex, lastIndex);
    this.advanceCommit(actions);
    return actions;
  }

  // ---- config ----------------------------------------------------------------

  private config(): Config {
    const last = this.log.lastConfig();
    if (!last) return { epoch: 0, index: 0, primary: null, members: [...this.initialMembers] };
    return { epoch: last.epoch, index: last.index, primary: last.config.primary, members: last.config.members };
  }

  private isAlive(peer: PeerState): boolean {
    return peer.linkUp && this.lastNow - peer.lastHeard <= this.timing.peerTimeoutMs;
  }

  private alive(id: NodeId): boolean {
    if (id === this.id) return true;
    const peer = this.peers.get(id);
    return peer !== undefined && this.isAlive(peer);
  }

  /**
   * Dead for election purposes: unreachable and no contact for unreachableGraceMs (counted from when
   * we started recovering or became eligible, so a link that has simply not been dialed yet is not death).
   */
  private presumedDead(id: NodeId): boolean {
    if (id === this.id || this.alive(id)) return false;
    const peer = this.peers.get(id);
    const lastContact = Math.max(peer?.lastHeard ?? -Infinity, this.contactBaseline);
    return this.lastNow - lastContact > this.timing.unreachableGraceMs;
  }

  /** The lost primary is certainly gone (refused, or silent past the peer timeout), not just a dropped link. */
  private lostForSure(id: NodeId): boolean {
    const peer = this.peers.get(id);
    if (!peer || this.alive(id)) return false;
    return peer.refused || this.lastNow - peer.lastHeard > this.timing.peerTimeoutMs;
  }

  private setRole(actions: Action[], role: Role, serving: boolean, reason: string): void {
    if (this.role === role && this.serving === serving) return;
    this.role = role;
    this.serving = serving;
    actions.push({ type: "role", role, epoch: this.promised, serving, reason });
  }

  private promise(actions: Action[], epoch: number): void {
    assert(epoch >= this.promised, `epoch never decreases (${epoch} < ${this.promised})`);
    if (epoch === this.promised) return;
    this.promised = epoch;
    actions.push({ type: "promise", epoch });
  }

  private updateEligibility(actions: Action[]): void {
    const config = this.config();
    const member = config.members.includes(this.id);
    // Eligible once we hold, while running continuously, a config written by the live primary that names us.
    // ...and only once that config entry is committed: an uncommitted one may vanish with its primary.
    // ...and only while the primary's own status names that same config: a server whose log is
    // behind may hold a config that named it, while the primary has since removed it (sim seed
    // 5010163: a removed, lagging backup became eligible, then took over alone and lost entries).
    const primaryStatus = this.primaryId !== null ? this.peers.get(this.primaryId)?.status : undefined;
    const primaryHasThisConfig = primaryStatus !== undefined && primaryStatus.configEpoch === config.epoch && primaryStatus.configIndex === config.index;
    if (member && primaryHasThisConfig && this.freshConfigSeen && config.epoch === this.promised && config.primary === this.primaryId && this.commitIndex >= config.index) {
      if (!this.eligible) this.contactBaseline = this.lastNow;
      this.eligible = true;
      if (this.role === "recovering") this.setRole(actions, "backup", false, `joined epoch ${config.epoch}`);
    }
  }

  // ---- heartbeats ------------------------------------------------------------

  private sendHeartbeats(actions: Action[], now: number): void {
    if (this.role === "primary") {
      this.round += 1;
      this.roundSentAt.set(this.round, now);
      this.roundSentAt.delete(this.round - 64);
    }
    const status = this.status();
    for (const [id, peer] of this.peers) {
      if (peer.linkUp) actions.push({ type: "send", to: id, message: { t: "heartbeat", status, round: this.role === "primary" ? this.round : 0 } });
    }
  }

  private sendStatusTo(actions: Action[], to: NodeId): void {
    actions.push({ type: "send", to, message: { t: "heartbeat", status: this.status(), round: 0 } });
  }

  private onHeartbeat(actions: Action[], from: NodeId, message: PeerMessageOf<"heartbeat">, now: number): void {
    const peer = this.peers.get(from)!;
    peer.status = message.status;
    peer.statusAt = now;
    const mine = this.config();
    const newer = isNewerConfig(message.status, mine);
    if (newer && this.role === "primary" && message.status.configEpoch > mine.epoch) {
      // Another server took over in a later epoch: we are no longer primary.
      this.becomeRecovering(actions, `server ${from} has config epoch ${message.status.configEpoch} > ${mine.epoch}`);
      return;
    }
    if (newer && this.eligible && !message.status.members.includes(this.id)) {
      // A newer config exists that removed us: whatever we hold may be stale. Recover.
      this.becomeRecovering(actions, `server ${from} has a newer config without us (epoch ${message.status.configEpoch}, index ${message.status.configIndex})`);
      return;
    }
    if (this.role === "primary" && !this.candidacy && message.status.epoch > this.promised) {
      // Someone promised a higher epoch to a candidacy that did not finish; re-establish ours above it.
      this.startCandidacy(actions, now, "continuous", `server ${from} is at epoch ${message.status.epoch}`);
      return;
    }
    // The candidate we promised to is alive too: do not time it out while it collects and takes over.
    if (from === this.primaryId && message.status.role === "candidate" && message.status.epoch === this.promised) this.lastHeardPrimary = now;
    const isMyPrimary = message.status.role === "primary" && message.status.epoch === this.promised && from === this.primaryId;
    if (isMyPrimary && message.round > 0) {
      this.lastHeardPrimary = now;
      // An idle primary sends no appends; its heartbeat still tells us how far it has committed.
      if (this.matchedEpoch === message.status.epoch) this.commitIndex = Math.max(this.commitIndex, Math.min(message.status.commitIndex, this.matchedIndex));
      if (!this.eligible) this.updateEligibility(actions);
      this.leasePromisedUntil = now + this.timing.leaseMs;
      actions.push({ type: "send", to: from, message: { t: "heartbeat_ack", epoch: this.promised, round: message.round } });
    }
  }

  private onHeartbeatAck(from: NodeId, message: PeerMessageOf<"heartbeat_ack">): void {
    if (this.role !== "primary" || message.epoch !== this.promised) return;
    this.ackRound.set(from, Math.max(this.ackRound.get(from) ?? 0, message.round));
    const members = this.config().members.filter((id) => id !== this.id);
    let minRound = Infinity;
    for (const member of members) minRound = Math.min(minRound, this.ackRound.get(member) ?? 0);
    const sentAt = this.roundSentAt.get(minRound);
    // The lease runs from when we sent the round, not when the ack arrived: conservative on both sides.
    if (sentAt !== undefined) this.leaseExpiry = Math.max(this.leaseExpiry, sentAt + this.timing.leaseMs);
  }

  // ---- primary -----------------------------------------------------------------

  private primaryTick(actions: Action[], now: number): void {
    // Until the takeover's own config is in the log (the shell may hold it back while it applies a
    // backlog), config() is still the old primary's: members removed or added from it would replace
    // the takeover's set with one that names servers this primary never counted, and nothing would commit.
    if (this.pendingConfigIndex === takeoverConfigNotProposed) return;
    const config = this.config();
    this.retransmit(now);
    // A silent member, or one that has stopped acknowledging, is removed from the in-sync set
    // before anything else commits.
    const dead = config.members.filter((id) => id !== this.id && (!this.alive(id) || this.stalled(id, now)));
    if (dead.length > 0) {
      const members = config.members.filter((id) => !dead.includes(id));
      for (const id of dead) this.followers.delete(id);
      this.proposeConfig(actions, members, `removing failed ${dead.join(",")}`);
      return;
    }
    for (const [id, follower] of this.followers) {
      if (!follower.member && !this.alive(id)) this.followers.delete(id);
    }
    // A joiner that has caught up becomes a member, one at a time.
    if (this.serving && this.pendingConfigIndex <= this.commitIndex) {
      for (const [id, follower] of this.followers) {
        if (follower.reconfirm && follower.member && follower.ackIndex + this.timing.batchEntriesMax >= this.log.lastIndex) {
          follower.reconfirm = false;
          this.proposeConfig(actions, config.members, `reconfirming ${id}`);
          break;
        }
        if (follower.member || follower.ackIndex + this.timing.batchEntriesMax < this.log.lastIndex) continue;
        const members = this.sortByOrder([...config.members, id]);
        follower.member = true;
        this.proposeConfig(actions, members, `adding caught-up ${id}`);
        break;
      }
    }
  }

  /** Behind, and no ack progress for a peer timeout: alive perhaps, but useless to commit with. */
  private stalled(id: NodeId, now: number): boolean {
    const follower = this.followers.get(id);
    if (!follower || follower.ackIndex >= this.persistedIndex) return false;
    return now - follower.lastProgress > this.timing.peerTimeoutMs;
  }

  /** An append or its ack can be lost (a dropped link, a lossy network): resend from the last ack. */
  private retransmit(now: number): void {
    for (const follower of this.followers.values()) {
      if (follower.ackIndex >= this.log.lastIndex) {
        follower.lastProgress = now;
        continue;
      }
      if (follower.nextIndex > this.log.lastIndex + 1) continue; // waiting for a joiner to truncate
      const quiet = now - Math.max(follower.lastProgress, follower.lastSend);
      if (follower.nextIndex > follower.ackIndex + 1 && quiet > 3 * this.timing.heartbeatIntervalMs) {
        follower.nextIndex = follower.ackIndex + 1;
        follower.probing = true;
      }
    }
  }

  private proposeConfig(actions: Action[], members: NodeId[], reason: string): void {
    actions.push({ type: "propose_config", config: { op: "config", primary: this.id, members: this.sortByOrder(members) }, reason });
  }

  /** Sends each follower the next entries it lacks, within the in-flight bound. */
  private replicate(actions: Action[], now: number): void {
    for (const [id, follower] of this.followers) {
      if (!this.peers.get(id)?.linkUp) continue;
      const limit = follower.probing ? Math.min(this.timing.batchEntriesMax, this.timing.inflightEntriesMax) : this.timing.inflightEntriesMax;
      while (follower.nextIndex <= this.log.lastIndex && follower.nextIndex - 1 - follower.ackIndex < limit) {
        const to = Math.min(this.log.lastIndex, follower.nextIndex + this.timing.batchEntriesMax - 1);
        const entries = this.log.entries(follower.nextIndex, to);
        assert(entries.length === to - follower.nextIndex + 1, `log holds entries ${follower.nextIndex}..${to}`);
        const prevIndex = follower.nextIndex - 1;
        actions.push({
          type: "send",
          to: id,
          message: { t: "append", epoch: this.promised, prevIndex, prevEpoch: this.log.epochAt(prevIndex), entries, commitIndex: this.commitIndex },
        });
        follower.nextIndex = to + 1;
        follower.lastSend = now;
      }
    }
  }

  private onAppendAck(actions: Action[], from: NodeId, message: PeerMessageOf<"append_ack">, now: number): void {
    if (this.role !== "primary" || message.epoch !== this.promised) return;
    const follower = this.followers.get(from);
    if (!follower) return;
    if (message.lastIndex > follower.ackIndex) {
      follower.ackIndex = message.lastIndex;
      follower.lastProgress = now;
      follower.probing = false;
    }
    if (follower.nextIndex <= follower.ackIndex) follower.nextIndex = follower.ackIndex + 1;
    this.advanceCommit(actions);
    this.replicate(actions, now);
  }

  private onAppendNack(actions: Action[], from: NodeId, message: PeerMessageOf<"append_nack">, now: number): void {
    if (this.role !== "primary" || message.epoch !== this.promised) return;
    const follower = this.followers.get(from);
    if (!follower) return;
    this.matchFollower(actions, from, follower, message.lastIndex, message.lastEpoch);
    this.replicate(actions, now);
  }

  /** Points the follower at the first entry after the longest prefix our logs share, or tells it to truncate. */
  private matchFollower(actions: Action[], to: NodeId, follower: Follower, lastIndex: number, lastEpoch: number): void {
    if (lastIndex <= this.log.lastIndex && this.log.epochAt(lastIndex) === lastEpoch) {
      follower.nextIndex = lastIndex + 1;
      follower.ackIndex = lastIndex;
      return;
    }
    const truncateTo = Math.min(lastIndex, this.log.lastIndexAtOrBeforeEpoch(lastEpoch));
    follower.nextIndex = Number.MAX_SAFE_INTEGER; // nothing to send until it joins again
    actions.push({ type: "send", to, message: { t: "join_truncate", epoch: this.promised, truncateTo, truncateEpoch: this.log.epochAt(truncateTo) } });
  }

  private advanceCommit(actions: Action[]): void {
    const members = this.config().members;
    let index = this.persistedIndex;
    for (const member of members) {
      if (member === this.id) continue;
      index = Math.min(index, this.followers.get(member)?.ackIndex ?? 0);
    }
    // Nothing commits past the last commit until the newest config entry is on every member it names.
    if (this.pendingConfigIndex > this.commitIndex && index < this.pendingConfigIndex) return;
    if (index <= this.commitIndex) return;
    this.commitIndex = index;
    actions.push({ type: "commit", index });
    if (!this.serving && this.pendingConfigIndex <= index) {
      this.setRole(actions, "primary", true, `config of epoch ${this.promised} committed`);
      this.leaseExpiry = 0;
    }
  }

  private onJoin(actions: Action[], from: NodeId, message: PeerMessageOf<"join">, now: number): void {
    if (this.role !== "primary" || !this.serving) return;
    let follower = this.followers.get(from);
    const member = this.config().members.includes(from);
    if (!follower) {
      follower = { nextIndex: 1, ackIndex: 0, member, lastSend: now, reconfirm: false, lastProgress: now, probing: false };
      this.followers.set(from, follower);
    }
    // A member asking to join lost its eligibility (it froze or restarted): once it has caught up it
    // needs a fresh config entry naming it before it may take over again.
    if (member) follower.reconfirm = true;
    this.matchFollower(actions, from, follower, message.lastIndex, message.lastEpoch);
    this.replicate(actions, now);
  }

  // ---- backup --------------------------------------------------------------------

  private onAppend(actions: Action[], from: NodeId, message: PeerMessageOf<"append">, now: number): void {
    const leading = this.candidacy !== null || this.role === "primary";
    // Nothing from an older epoch is accepted; at our own epoch only the server we promised to sends appends.
    if (message.epoch < this.promised || (message.epoch === this.promised && leading)) {
      actions.push({ type: "send", to: from, message: { t: "stale", epoch: this.promised } });
      return;
    }
    if (message.epoch > this.promised && leading) {
      // Deposed: a newer primary exists. We become eligible again only through its config.
      this.candidacy = null;
      this.followers.clear();
      this.loseEligibility();
      this.setRole(actions, "recovering", false, `deposed by ${from} at epoch ${message.epoch}`);
    }
    if (message.epoch > this.promised) this.promise(actions, message.epoch);
    if (this.primaryId !== from || this.matchedEpoch !== message.epoch) {
      this.matchedIndex = 0;
      this.matchedEpoch = message.epoch;
    }
    this.primaryId = from;
    this.lastHeardPrimary = now;
    this.lastAppendAt = now;
    if (from === this.joinTarget) this.joinAnswered = true;
    if (this.role !== "backup" && this.role !== "recovering") this.setRole(actions, this.eligible ? "backup" : "recovering", false, `following ${from}`);
    const last = this.log.lastIndex;
    if (message.prevIndex > last || (message.prevIndex > 0 && this.log.epochAt(message.prevIndex) !== message.prevEpoch)) {
      actions.push({ type: "send", to: from, message: { t: "append_nack", epoch: this.promised, lastIndex: last, lastEpoch: this.log.lastEpoch } });
      return;
    }
    const fresh: LogEntry[] = [];
    for (const entry of message.entries as LogEntry[]) {
      if (entry.index <= last) {
        if (this.log.epochAt(entry.index) !== entry.epoch) {
          // Our suffix diverges from the primary's: only a non-member can be here; let the primary sort it out.
          actions.push({ type: "send", to: from, message: { t: "append_nack", epoch: this.promised, lastIndex: last, lastEpoch: this.log.lastEpoch } });
          return;
        }
        continue;
      }
      fresh.push(entry);
    }
    if (fresh.some((entry) => entry.command.op === "config" && (entry.command as ConfigCommand).members.includes(this.id))) this.freshConfigSeen = true;
    // Our log now matches the primary's through the end of this append.
    const through = message.prevIndex + message.entries.length;
    this.matchedIndex = Math.max(this.matchedIndex, Math.min(through, last + fresh.length));
    this.commitIndex = Math.max(this.commitIndex, Math.min(message.commitIndex, this.matchedIndex));
    if (fresh.length === 0) {
      actions.push({ type: "send", to: from, message: { t: "append_ack", epoch: this.promised, lastIndex: last } });
      return;
    }
    actions.push({ type: "persist", entries: fresh });
  }

  private backupTick(actions: Action[], now: number): void {
    const primary = this.primaryId ?? this.config().primary;
    if (primary !== null && primary !== this.id && this.alive(primary) && now - this.lastHeardPrimary <= this.timing.peerTimeoutMs) return;
    if (now < this.candidacyNotBefore) return;
    if (!this.eligible) {
      this.becomeRecovering(actions, "primary lost while not eligible");
      return;
    }
    // The primary is gone (or it was us, and we lost the role). The first member of our config in
    // consts order that may be alive and eligible takes over. A member we cannot reach but have not
    // yet given up on (see presumedDead) might be that one: wait for it rather than race it.
    const config = this.config();
    const lost = primary === this.id ? null : primary;
    const successor = this.order.find((id) => {
      if (id === lost || !config.members.includes(id)) return false;
      if (id === this.id) return true;
      const peer = this.peers.get(id)!;
      if (!this.isAlive(peer)) return !this.presumedDead(id);
      return peer.status?.eligible === true && peer.status.configEpoch === config.epoch && peer.status.configIndex === config.index;
    });
    if (successor === this.id) this.startCandidacy(actions, now, "continuous", `primary ${lost ?? "role"} lost`, lost);
  }

  // ---- recovering ----------------------------------------------------------------

  private loseEligibility(): void {
    this.eligible = false;
    this.freshConfigSeen = false;
    this.joinTarget = null;
    this.joinAnswered = false;
    this.matchedIndex = 0;
  }

  private becomeRecovering(actions: Action[], reason: string): void {
    this.loseEligibility();
    this.joinSentAt = -Infinity;
    this.contactBaseline = this.lastNow;
    this.matchedIndex = 0;
    this.candidacy = null;
    this.followers.clear();
    this.primaryId = null;
    this.setRole(actions, "recovering", false, reason);
  }

  private recoveringTick(actions: Action[], now: number): void {
    // A serving primary exists: catch up from it.
    const primary = this.knownPrimary();
    if (primary !== null && primary !== this.id) {
      // Joined already: the primary we asked has answered with an append or a truncate.
      if (this.joinTarget === primary && this.joinAnswered && this.primaryId === primary && now - this.lastAppendAt <= 4 * this.timing.peerTimeoutMs) return;
      if (now - this.joinSentAt >= this.timing.peerTimeoutMs) {
        this.joinSentAt = now;
        this.joinTarget = primary;
        this.joinAnswered = false;
        actions.push({ type: "send", to: primary, message: { t: "join", lastIndex: this.log.lastIndex, lastEpoch: this.log.lastEpoch } });
      }
      return;
    }
    if (now < this.candidacyNotBefore) return;
    // Appends from a primary of our epoch arrived just now: it leads, even if the last status it sent
    // predates its takeover (a status says "serving" only a heartbeat later). Without this, a server
    // that holds the new config entry but an old status of its sender would see a better log here
    // and depose a primary that had just begun serving.
    if (this.primaryId !== null && this.primaryId !== this.id && this.matchedEpoch === this.promised && now - this.lastAppendAt <= this.timing.peerTimeoutMs) return;
    // No primary. Elect only from the newest config any reachable server knows, and only once
    // every member of it is reachable: then its members together hold every acknowledged write.
    const latest = this.latestKnownConfig();
    // Hear from everyone reachable before trusting what we know: a newer config may be a dial away,
    // even on a server outside every config we know (a primary ships a config entry before its own
    // fsync, so the only copy of it may be on the server it added). Once every server of the cluster
    // is reachable and has sent its status since we started recovering, every config that exists
    // has shown, and there is nothing left to wait for: a cluster frozen as a whole (one stalled
    // disk) elects at once instead of after the grace.
    const heardFromEveryServer = this.order.every((id) => {
      const peer = this.peers.get(id);
      return id === this.id || (peer !== undefined && this.isAlive(peer) && peer.status !== undefined && peer.statusAt >= this.contactBaseline);
    });
    if (!heardFromEveryServer && now - this.contactBaseline < this.timing.unreachableGraceMs) return;
    if (!latest.members.every((id) => this.alive(id))) return;
    const someoneContinuous = latest.members.some((id) => id !== this.id && this.peers.get(id)?.status?.eligible === true);
    if (someoneContinuous) return; // an eligible member will take over through the continuous path
    // The member with the best log (last epoch, then last index; ties in consts order) leads: it
    // holds the newest config, so the others cannot reject it as stale, and it needs to fetch nothing.
    const logOf = (id: NodeId) => (id === this.id ? { lastEpoch: this.log.lastEpoch, lastIndex: this.log.lastIndex } : this.peers.get(id)!.status!);
    if (!latest.members.every((id) => id === this.id || this.peers.get(id)?.status)) return;
    let best: NodeId | null = null;
    for (const id of this.order) {
      if (!latest.members.includes(id)) continue;
      const log = logOf(id);
      if (best === null) best = id;
      else {
        const current = logOf(best);
        if (log.lastEpoch > current.lastEpoch || (log.lastEpoch === current.lastEpoch && log.lastIndex > current.lastIndex)) best = id;
      }
    }
    if (best === this.id) this.startCandidacy(actions, now, "restart", `all ${latest.members.length} members of config epoch ${latest.epoch} reachable; best log here`);
  }

  private latestKnownConfig(): { epoch: number; index: number; members: NodeId[] } {
    let best: { epoch: number; index: number; members: NodeId[] } = this.config();
    for (const peer of this.peers.values()) {
      if (!this.isAlive(peer) || !peer.status) continue;
      if (isNewerConfig(peer.status, best)) best = { epoch: peer.status.configEpoch, index: peer.status.configIndex, members: peer.status.members };
    }
    return best;
  }

  private onJoinTruncate(actions: Action[], from: NodeId, message: PeerMessageOf<"join_truncate">): void {
    if (this.role === "primary" || this.candidacy) return;
    if (this.eligible) return; // a member's log never diverges from its primary's
    // Fenced like an append: only from the primary we asked to join, and never from an older epoch.
    // A deposed primary's late join_truncate would otherwise cut entries its successor committed here.
    if (message.epoch < this.promised || from !== this.joinTarget) return;
    this.joinAnswered = true;
    this.matchedIndex = 0;
    const keep = Math.min(message.truncateTo, this.log.lastIndexAtOrBeforeEpoch(message.truncateEpoch), this.log.lastIndex);
    if (keep < this.log.lastIndex) actions.push({ type: "truncate", afterIndex: keep });
    // The truncate action runs before this send, so the log ends at `keep` when the primary reads it.
    const epochAtKeep = keep === 0 ? 0 : keep === this.log.lastIndex ? this.log.lastEpoch : this.log.epochAt(keep);
    this.joinSentAt = this.lastNow;
    this.joinTarget = from;
    this.joinAnswered = false;
    actions.push({ type: "send", to: from, message: { t: "join", lastIndex: keep, lastEpoch: epochAtKeep } });
  }

  // ---- takeover -------------------------------------------------------------------

  /** `lost` is the primary whose loss started this: it is not waited for (acknowledged writes are on every member anyway). */
  private startCandidacy(actions: Action[], now: number, path: Candidacy["path"], reason: string, lost: NodeId | null = null): void {
    const config = this.config();
    let highest = Math.max(this.promised, config.epoch, this.highestEpochSeen);
    for (const peer of this.peers.values()) if (peer.status) highest = Math.max(highest, peer.status.epoch);
    const epoch = highest + 1;
    const candidates = path === "restart" ? this.latestKnownConfig().members : config.members;
    // Continuous path: wait for every member not presumed dead, reachable yet or not.
    // The lost primary is not waited for once it is certainly gone: acknowledged writes are on every
    // member anyway. A merely dropped link (it may be back in a moment) is waited for, so that a
    // link flap does not produce two primaries.
    const skip = (id: NodeId) => id === lost && this.lostForSure(id);
    const waitFor = new Set(candidates.filter((id) => id !== this.id && !skip(id) && (path === "restart" ? this.alive(id) : !this.presumedDead(id))));
    this.promise(actions, epoch);
    this.followers.clear();
    this.primaryId = null;
    this.candidacy = { epoch, path, waitFor, oks: new Map(), phase: "collect", members: [], deadline: now + this.timing.takeoverWaitMs, lost };
    this.setRole(actions, "candidate", false, `${reason}; epoch ${epoch}`);
    for (const id of waitFor) actions.push({ type: "send", to: id, message: { t: "prepare", epoch, configEpoch: config.epoch, configIndex: config.index } });
    this.maybeFinishCollect(actions, now);
  }

  private abortCandidacy(actions: Action[], now: number, reason: string, stale: boolean): void {
    this.candidacy = null;
    this.candidacyNotBefore = now + this.timing.heartbeatIntervalMs * (1 + Math.floor(this.random() * 4));
    if (stale) this.becomeRecovering(actions, reason);
    else this.setRole(actions, this.eligible ? "backup" : "recovering", false, reason);
  }

  private candidacyTick(actions: Action[], now: number): void {
    const candidacy = this.candidacy!;
    if (now > candidacy.deadline) {
      this.abortCandidacy(actions, now, "takeover timed out", false);
      return;
    }
    if (candidacy.phase !== "collect") return;
    // A member that died while we waited cannot hold anything the others lack: stop waiting for it.
    for (const id of [...candidacy.waitFor]) {
      const gone = this.presumedDead(id) || (id === candidacy.lost && this.lostForSure(id));
      if (candidacy.path === "continuous" && gone && !candidacy.oks.has(id)) candidacy.waitFor.delete(id);
      if (candidacy.path === "restart" && !this.alive(id)) {
        this.abortCandidacy(actions, now, `member ${id} lost during restart election`, false);
        return;
      }
    }
    this.maybeFinishCollect(actions, now);
  }

  private onPrepare(actions: Action[], from: NodeId, message: PeerMessageOf<"prepare">, now: number): void {
    const config = this.config();
    const reject = (reason: "epoch" | "lease" | "config") =>
      actions.push({ type: "send", to: from, message: { t: "prepare_reject", epoch: message.epoch, promised: this.promised, configEpoch: config.epoch, reason } });
    const candidateConfig = { configEpoch: message.configEpoch, configIndex: message.configIndex };
    if (isNewerConfig({ configEpoch: config.epoch, configIndex: config.index }, { epoch: candidateConfig.configEpoch, index: candidateConfig.configIndex }) && config.members.includes(this.id)) {
      return void reject("config");
    }
    if (message.epoch <= this.promised) return void reject("epoch");
    if (this.role === "primary" && this.serving) return void reject("lease");
    if (now < this.leasePromisedUntil && this.primaryId !== null && this.alive(this.primaryId)) return void reject("lease");
    if (this.candidacy) this.candidacy = null;
    this.promise(actions, message.epoch);
    this.primaryId = from;
    this.lastHeardPrimary = now;
    if (this.role === "primary" || this.role === "candidate") this.setRole(actions, this.eligible ? "backup" : "recovering", false, `promised epoch ${message.epoch} to ${from}`);
    this.followers.clear();
    actions.push({
      type: "send",
      to: from,
      message: { t: "prepare_ok", epoch: message.epoch, lastIndex: this.log.lastIndex, lastEpoch: this.log.lastEpoch, configEpoch: config.epoch, eligible: this.eligible },
    });
  }

  private onPrepareOk(actions: Action[], from: NodeId, message: PeerMessageOf<"prepare_ok">, now: number): void {
    const candidacy = this.candidacy;
    if (!candidacy || message.epoch !== candidacy.epoch || candidacy.phase !== "collect") return;
    if (message.configEpoch > this.config().epoch) {
      this.abortCandidacy(actions, now, `server ${from} has a newer config`, true);
      return;
    }
    candidacy.oks.set(from, message);
    this.maybeFinishCollect(actions, now);
  }

  private onPrepareReject(actions: Action[], from: NodeId, message: PeerMessageOf<"prepare_reject">, now: number): void {
    const candidacy = this.candidacy;
    if (!candidacy || message.epoch !== candidacy.epoch) return;
    if (message.reason === "config" || message.configEpoch > this.config().epoch) {
      this.abortCandidacy(actions, now, `server ${from} has config epoch ${message.configEpoch}`, true);
      return;
    }
    this.abortCandidacy(actions, now, `server ${from} rejected epoch ${message.epoch} (${message.reason})`, false);
  }

  private maybeFinishCollect(actions: Action[], now: number): void {
    const candidacy = this.candidacy!;
    for (const id of candidacy.waitFor) if (!candidacy.oks.has(id)) return;
    // Whose log is longest among those that may hold acknowledged writes?
    const counted = [...candidacy.oks.entries()].filter(([, ok]) => candidacy.path === "restart" || ok.eligible);
    let best: { id: NodeId; lastIndex: number; lastEpoch: number } = { id: this.id, lastIndex: this.log.lastIndex, lastEpoch: this.log.lastEpoch };
    for (const [id, ok] of counted) {
      if (ok.lastEpoch > best.lastEpoch || (ok.lastEpoch === best.lastEpoch && ok.lastIndex > best.lastIndex)) best = { id, lastIndex: ok.lastIndex, lastEpoch: ok.lastEpoch };
    }
    candidacy.members = this.sortByOrder([this.id, ...counted.map(([id]) => id)]);
    if (best.id !== this.id) {
      candidacy.phase = "fetch";
      candidacy.fetchFrom = best.id;
      candidacy.fetchTarget = best.lastIndex;
      this.continueFetch(actions, now);
      return;
    }
    this.completeCandidacy(actions, now);
  }

  private continueFetch(actions: Action[], now: number): void {
    const candidacy = this.candidacy!;
    if (this.log.lastIndex >= candidacy.fetchTarget!) {
      this.completeCandidacy(actions, now);
      return;
    }
    actions.push({ type: "send", to: candidacy.fetchFrom!, message: { t: "fetch", epoch: candidacy.epoch, fromIndex: this.log.lastIndex + 1 } });
  }

  private onFetch(actions: Action[], from: NodeId, message: PeerMessageOf<"fetch">): void {
    if (message.epoch !== this.promised || message.fromIndex > this.log.lastIndex + 1) return;
    const to = Math.min(this.log.lastIndex, message.fromIndex + this.timing.batchEntriesMax - 1);
    const prevIndex = message.fromIndex - 1;
    actions.push({
      type: "send",
      to: from,
      message: { t: "fetch_reply", epoch: message.epoch, prevIndex, prevEpoch: this.log.epochAt(prevIndex), entries: this.log.entries(message.fromIndex, to) },
    });
  }

  private onFetchReply(actions: Action[], from: NodeId, message: PeerMessageOf<"fetch_reply">, now: number): void {
    const candidacy = this.candidacy;
    if (!candidacy || candidacy.phase !== "fetch" || candidacy.fetchFrom !== from || message.epoch !== candidacy.epoch) return;
    if (message.prevIndex !== this.log.lastIndex || message.prevEpoch !== this.log.lastEpoch || message.entries.length === 0) {
      // Logs of in-sync members are prefixes of one another; anything else means we must not lead.
      this.abortCandidacy(actions, now, `log of ${from} does not extend ours at ${this.log.lastIndex}`, true);
      return;
    }
    actions.push({ type: "persist", entries: message.entries as LogEntry[] });
  }

  private completeCandidacy(actions: Action[], now: number): void {
    const candidacy = this.candidacy!;
    this.candidacy = null;
    this.eligible = true;
    this.freshConfigSeen = true;
    this.primaryId = this.id;
    this.followers.clear();
    this.ackRound.clear();
    this.leaseExpiry = 0;
    this.persistedIndex = this.log.lastIndex;
    this.pendingConfigIndex = takeoverConfigNotProposed; // set to the real index when the config entry is proposed
    for (const id of candidacy.members) {
      if (id === this.id) continue;
      const ok = candidacy.oks.get(id)!;
      const shared = Math.min(ok.lastIndex, this.log.lastIndex);
      this.followers.set(id, { nextIndex: shared + 1, ackIndex: shared, member: true, lastSend: now, reconfirm: false, lastProgress: now, probing: false });
    }
    // A member whose log is not a prefix of ours is told to truncate by the append it nacks.
    this.setRole(actions, "primary", false, `took over epoch ${candidacy.epoch} with members ${candidacy.members.join(",")}`);
    this.proposeConfig(actions, candidacy.members, "takeover");
  }

  private onStale(actions: Action[], from: NodeId, message: PeerMessageOf<"stale">, now: number): void {
    if (message.epoch <= this.promised) return;
    if (this.candidacy) {
      this.abortCandidacy(actions, now, `server ${from} is at epoch ${message.epoch}`, false);
      return;
    }
    if (this.role === "primary" && !this.candidacy) {
      this.startCandidacy(actions, now, "continuous", `server ${from} is at epoch ${message.epoch}`);
    }
  }

  private sortByOrder(ids: NodeId[]): NodeId[] {
    const unique = [...new Set(ids)];
    return unique.sort((a, b) => this.order.indexOf(a) - this.order.indexOf(b));
  }
}

/** Is config a newer than config b? Epoch first; within an epoch, the later log index. */
function isNewerConfig(a: { configEpoch: number; configIndex: number }, b: { epoch: number; index: number }): boolean {
  return a.configEpoch > b.epoch || (a.configEpoch === b.epoch && a.configIndex > b.index);
}

/** The epoch a peer message speaks for, for tracking the highest epoch anyone has reached. */
function epochIn(message: PeerMessage): number {
  switch (message.t) {
    case "heartbeat":
      return message.status.epoch;
    case "join":
      return 0;
    case "prepare_reject":
      return Math.max(message.epoch, message.promised);
    default:
      return message.epoch;
  }
}
