// Every bound, timeout and default of Chat+ lives here, units last in the name.
// The machine list can be overridden by a zod-validated config file (see loadClusterConfig).
import { readFileSync } from "node:fs";
import { z } from "zod";

export const protocolVersion = 1;

// ---- framing -------------------------------------------------------------
/** Largest client frame (one JSON line, newline excluded). Larger frames get CHAT_ERR_FRAME_TOO_LARGE and the connection closes. */
export const frameBytesMax = 64 * 1024;
/**
 * Largest server -> client frame a client accepts. Server frames are not bounded by frameBytesMax:
 * a history or events_since page of 500 long messages is megabytes (500 x 4,000 code points, JSON
 * escaped). Readers that used frameBytesMax here dropped the link on every resume of a big backlog
 * and never caught up (found by the soak: a connector stuck failing over, its pushes lost).
 */
export const serverFrameBytesMax = 32 * 1024 * 1024;
/** Largest peer frame; a replication batch or a catch-up chunk must fit. */
export const peerFrameBytesMax = 32 * 1024 * 1024;

// ---- chat limits ---------------------------------------------------------
export const usernameLengthMin = 2;
export const usernameLengthMax = 32;
export const passwordLengthMin = 8;
export const passwordLengthMax = 256;
export const messageLengthMax = 4000;
export const channelNameLengthMax = 32;
export const topicLengthMax = 200;
export const pageSizeDefault = 50;
export const pageSizeMax = 500;
/**
 * Unread counts stop at this many per conversation ("1000" reads "1000 or more"): counting is a scan
 * of the unread messages, and auth, login and register all return the summary. Uncapped, 16 clients
 * re-authenticating after a failover, each with thousands unread, blocked a new primary's loop past
 * its own freeze detector (docs/performance.md).
 */
export const unreadCountMax = 1000;
/**
 * A read_undelivered page stops once its bodies hold this many characters (UTF-16 code units; always
 * at least one message), whatever its limit: the call is a replicated write whose response is logged,
 * and 500 messages of 4,000 characters made one command of ~2 MB: one turn of every server, which the
 * bound on a turn's work (transactionLogBytesMax) cannot split (architecture.md §8.1). 500 messages of 256 characters fit, as ever; `remaining` says more wait.
 */
export const undeliveredPageCharsMax = 256 * 1024;
export const defaultChannels: readonly string[] = ["general", "random"];
/** scrypt cost; 2^14 is the Node default and OWASP's floor for scrypt. */
export const scryptCost = 16384;
export const scryptKeyBytes = 32;
export const saltBytes = 16;
export const sessionTokenBytes = 32;

// ---- idempotency ---------------------------------------------------------
// No dedup window: every write's response lives in its log entry, found by (clientId, request id).
/** Requests a single connection may have outstanding before the server answers CHAT_ERR_OVERLOADED. */
export const connectionInflightMax = 1024;
/**
 * Frames of one connection handled per turn of the event loop; the rest wait, with the socket
 * paused. One 64 KB read can hold ~700 history requests of 500 rows each: handled in one turn, that
 * is seconds of work, past freezeDetectMs, and the primary would treat itself as restarted.
 */
export const connectionFramesPerTurnMax = 32;
/**
 * A connection whose unsent output passes this stops being read until the client reads (drain):
 * a client that sends requests and never reads their answers cannot grow the server's memory.
 */
export const connectionOutputPauseBytes = 1024 * 1024;
/**
 * Unsent output past this (pushes keep coming while reading is paused) closes the connection. The
 * client reconnects and catches up with events_since, so nothing is lost. Above the largest single
 * frame the server sends (a history page of 500 long messages, JSON escaped, is ~12 MB).
 */
export const connectionOutputMaxBytes = 32 * 1024 * 1024;
/**
 * Password checks (scrypt, ~16 MB and tens of ms each) running at once on this server. They run on
 * libuv's thread pool, which the primary's fsyncs share: the rest of its 4 threads stay free for them.
 */
export const passwordChecksConcurrentMax = 2;
/** Password checks waiting for one of those slots; more get CHAT_ERR_OVERLOADED. */
export const passwordChecksQueuedMax = 1024;
/**
 * Wrong passwords for one account (login, delete_account), per server: the first 5 in a row cost
 * nothing more; after that each check waits 1 s, then 2, 4, ... up to a minute, and an attempt
 * inside the wait gets CHAT_ERR_TOO_MANY_ATTEMPTS at once (connections/password-throttle.ts).
 */
export const passwordThrottle = {
  freeFailures: 5,
  firstDelayMs: 1000,
  delayMaxMs: 60_000,
  forgetAfterMs: 15 * 60_000,
  /** ~100 bytes each: a few MB at most, however many names are guessed at. */
  accountsMax: 65_536,
  busyRetryMs: 250,
} as const;

// ---- replication ---------------------------------------------------------
export const tickIntervalMs = 10;
export const heartbeatIntervalMs = 40;
/** No message from a peer for this long: the peer is considered failed. */
export const peerTimeoutMs = 300;
/**
 * A tick that fires this late means the process was frozen; it must treat itself as restarted.
 * Must stay below peerTimeoutMs - heartbeatIntervalMs, so any freeze the peers can act on is noticed.
 */
export const freezeDetectMs = 200;
/** A primary may serve reads until this long after the last heartbeat round every in-sync backup acknowledged. Must stay below peerTimeoutMs. */
export const leaseMs = 200;
/**
 * Redials of a lost peer link back off from 20 ms to at most 100 ms. Only the earlier server in
 * consts order dials, so a restarted later server waits for this redial before it can catch up or
 * take part in a restart election; with a 500 ms ceiling that wait averaged ~250 ms. Ten connect
 * attempts a second to a dead peer cost nothing.
 */
export const peerDialBackoffMinMs = 20;
export const peerDialBackoffMaxMs = 100;
/**
 * After a link drops, a server knocks on the peer's port this often, at most this many times
 * (together under peerTimeoutMs): a refused connection proves the peer's process is gone.
 */
export const peerProbeIntervalMs = 25;
export const peerProbeAttemptsMax = 10;
/** Entries per append or catch-up batch. A backup applies a batch in one synchronous transaction, so it must stay well below freezeDetectMs (~50 µs an entry). */
export const replicationBatchEntriesMax = 500;
/**
 * Appended-but-unacknowledged entries a primary keeps in flight per backup (backpressure). Also the
 * most the primary reads and encodes for one follower in one turn, and the most a catching-up
 * follower receives in one burst: 4 batches keep loopback pipelined while both stay far below
 * freezeDetectMs (20,000 made a new primary read and encode for ~300 ms and trip its own detector).
 */
export const replicationInflightEntriesMax = 4 * replicationBatchEntriesMax;
/**
 * A backup catching up logs the entries the primary has already committed and applies them once none
 * have arrived for this long. Logging is about a third of the work of applying, and the log is what
 * the in-sync set needs, so it is back in the set about twice as soon (docs/architecture.md §7.1).
 */
export const catchUpQuietMs = 20;
/** Recent log entries the primary keeps in memory for replication; older ones are read back from SQLite (catch-up). */
export const logCacheEntriesMax = 4 * replicationBatchEntriesMax;
/** Client writes grouped into one SQLite transaction. */
export const groupCommitRequestsMax = 512;
/**
 * Bytes one write transaction logs (commands and stored responses) before it takes no more entries
 * to apply: the rest wait for the next one, a turn later. The count of writes alone did not bound a
 * turn: a read_undelivered of 500 messages of 4,000 characters logs a 2 MB response and took ~45 ms
 * to apply, so 32 of them pipelined held one turn for over a second, far past freezeDetectMs, and the
 * server took itself for frozen (architecture.md §8.1). 1 MiB of such work is ~25 ms here; 512 posts
 * of 256 bytes log ~230 KB.
 */
export const transactionLogBytesMax = 1024 * 1024;
/**
 * A primary's batch of at least this many writes is fsynced on libuv's thread pool, so its event
 * loop goes on with the next requests and acks meanwhile. A smaller batch fsyncs inline: a lone
 * write waits less than with the hop to the pool and back (docs/architecture.md §5.1).
 */
export const syncOffLoopBatchMin = 4;
/** A member we cannot reach counts as dead (for elections) only after this long without contact; above the peer dial backoff. */
export const unreachableGraceMs = 1000;
/** A takeover that has not completed in this long is abandoned and retried. */
export const takeoverWaitMs = 2000;

// ---- client connector ----------------------------------------------------
export const pingIntervalMs = 250;
export const pingTimeoutMs = 500;
export const requestTimeoutMs = 4000;
export const redirectsMax = 3;
export const retryBackoffMinMs = 25;
export const retryBackoffMaxMs = 1000;
/** Total time the connector keeps retrying one request before reporting CHAT_ERR_UNAVAILABLE or CHAT_ERR_OUTCOME_UNKNOWN. */
export const retryBudgetMs = 15000;

// ---- server processes ----------------------------------------------------
/**
 * Environment for a server process, set by whoever starts it (the C library and node read it at exec).
 * - MALLOC_ARENA_MAX: glibc gives each thread that allocates its own 64 MB malloc arena and keeps
 *   freed memory there: a primary's native buffers (socket writes of replication frames) left
 *   70-80 MB of RSS behind. Two arenas cut a primary under load from ~220 MB to ~140 MB with no
 *   change in throughput.
 * - MALLOC_MMAP_THRESHOLD_=131072: a fixed threshold, so a buffer of 128 KB or more (a catch-up's
 *   or a bulk load's replication frames) is mmapped and given back when freed. glibc's default
 *   threshold rises after such frees, and the buffers then stayed in the arena: with the fsync off
 *   the event loop (a primary takes larger batches), the primary ended a bulk load at 161 MB
 *   against 134 MB with this setting (132 MB with the fsync inline).
 * - --max-semi-space-size=4 (MB): V8 grows each of its two young-generation semi-spaces to 16 MB
 *   under load and keeps the pages. A server's objects are short-lived (a request, a batch): with
 *   2 MB, backups holding 1M messages went from 164 to ~116 MB but c=64 lost ~15% of its writes/s
 *   to extra scavenges; 4 MB showed no loss beyond the machine's noise.
 * It replaces any NODE_OPTIONS of the environment it is merged into. See docs/performance.md.
 */
export const serverProcessEnv: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: "2", MALLOC_MMAP_THRESHOLD_: "131072", NODE_OPTIONS: "--max-semi-space-size=4" };

// ---- cluster -------------------------------------------------------------
export const MachineSchema = z.object({
  id: z.number().int().min(1).max(64),
  host: z.string().min(1),
  clientPort: z.number().int().min(1).max(65535),
  peerPort: z.number().int().min(1).max(65535),
});
export type Machine = z.infer<typeof MachineSchema>;

export const ClusterConfigSchema = z
  .object({
    machines: z.array(MachineSchema).min(1).max(16),
    /** Members of the very first in-sync set, for a brand-new cluster; default: every machine. Servers listed but not here join later. */
    initialMembers: z.array(z.number().int()).min(1).optional(),
    /** Shared secret for the peer HMAC challenge. */
    clusterSecret: z.string().min(8).default("chat-plus-dev-secret-change-me"),
  })
  .superRefine((config, ctx) => {
    const ids = new Set<number>();
    for (const machine of config.machines) {
      if (ids.has(machine.id)) ctx.addIssue({ code: "custom", message: `duplicate machine id ${machine.id}` });
      ids.add(machine.id);
    }
    for (const id of config.initialMembers ?? []) {
      if (!ids.has(id)) ctx.addIssue({ code: "custom", message: `initialMembers names unknown machine ${id}` });
    }
  });
export type ClusterConfig = z.infer<typeof ClusterConfigSchema>;

/** Default: three servers on loopback, in failover order. */
export const defaultClusterConfig: ClusterConfig = {
  machines: [
    { id: 1, host: "127.0.0.1", clientPort: 7101, peerPort: 7201 },
    { id: 2, host: "127.0.0.1", clientPort: 7102, peerPort: 7202 },
    { id: 3, host: "127.0.0.1", clientPort: 7103, peerPort: 7203 },
  ],
  clusterSecret: "chat-plus-dev-secret-change-me",
};

/** Reads and validates a cluster config file; throws an Error that says what is wrong. */
export function loadClusterConfig(path: string | undefined): ClusterConfig {
  if (path === undefined) return defaultClusterConfig;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`cannot read cluster config ${path}: ${(error as Error).message}`);
  }
  const parsed = ClusterConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join(".") || "(root)"}: ${issue.message}`);
    throw new Error(`invalid cluster config ${path}:\n  ${problems.join("\n  ")}\nSee docs/implementation.md for the format.`);
  }
  return parsed.data;
}
