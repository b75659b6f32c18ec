// Bounds and defaults of the benchmark, units last in the name (like connections/consts.ts).

/** RSS sampling period while a measuring window runs. */
export const benchSampleIntervalMs = 250;

// ---- the raw bench client ------------------------------------------------------
/** Opening a TCP connection to a server. */
export const connectTimeoutMs = 1000;
/** hello / auth / ping during setup or failover. */
export const controlRequestTimeoutMs = 3000;
/** A client keeps looking for a primary this long before giving up on its pending writes. */
export const failoverBudgetMs = 20000;
/** Attempts to reach a primary during one failover (each is a connect + hello + auth). */
export const failoverAttemptsMax = 4000;
/** Pause between failover attempts. */
export const failoverRetryMs = 5;
/** A write unanswered this long makes its client ask the locator whether a newer primary exists (freeze detection). */
export const suspectAfterMs = 60;

// ---- the primary locator (monitor connections that ping every machine) -------------
/** Ping period of each monitor connection while a failover phase runs. */
export const locatorPingIntervalMs = 10;
/** A machine whose last ping answer is older than this is not trusted as primary. */
export const locatorStaleMs = 60;
/** A ping unanswered this long closes the monitor connection (it reconnects). */
export const locatorPingTimeoutMs = 1000;

// ---- load --------------------------------------------------------------------------
/** Bytes of every message body (ASCII, so also its UTF-8 length). */
export const messageBodyBytes = 256;
/** Clients per chat group: a group shares one channel, and DMs go to the next member of the group. */
export const groupSizeDefault = 4;
/** Registrations in flight at once during setup (each costs one scrypt on the server). */
export const setupConcurrencyMax = 32;
/** Writes one client keeps in flight in pipelined (bulk) mode; well under connectionInflightMax. */
export const pipelineDepthMax = 64;
/**
 * Bulk loads (catch-up backlog, 1M messages): clients × depth writes in flight. 128 keeps group-commit
 * batches moderate: with 512 in flight the servers' event loops blocked long enough (> freezeDetectMs)
 * to declare themselves frozen and drop their clients, over and over.
 */
export const bulkClients = 16;
export const bulkDepth = 8;
/** Latency samples kept per level (a bound on memory; the run stops recording past it). */
export const latencySamplesMax = 5_000_000;

// ---- phases --------------------------------------------------------------------------
export const levelsDefault = [1, 16, 64, 256];
export const warmupSecondsDefault = 2;
/** Before a level's window, wait (up to --quiet-wait) until other jobs use less CPU than this. */
export const quietThresholdPercentDefault = 25;
export const measureSecondsDefault = 8;
export const failoverTrialsDefault = 4;
export const failoverConcurrencyDefault = 16;
/** Load runs this long before the primary is killed or frozen. */
export const failoverLeadInMs = 1500;
/** Load keeps running this long after the first write acknowledged by the new primary. */
export const failoverTailMs = 1000;
/** A trial with no write acknowledged by a new primary within this long is reported as failed. */
export const failoverTrialTimeoutMs = 20000;
export const catchUpEntriesDefault = 100_000;
/** Writing the catch-up backlog stops after this long even if fewer entries were written (reported). */
export const catchUpWriteSecondsMax = 150;
export const catchUpTimeoutMs = 180_000;
export const catchUpPollMs = 5;
export const millionMessagesDefault = 1_000_000;
/** The 1M-message load stops after this long even if fewer were written (reported). */
export const millionWriteSecondsMax = 240;
export const clusterSyncTimeoutMs = 60_000;
/** Entries of the profiled catch-up (a smaller copy of the catch-up phase, run under --cpu-prof). */
export const profileCatchUpEntriesMax = 30_000;
/** Profiled runs tried when a window contains a freeze or failover. */
export const profileAttemptsMax = 2;
/** Whole-run guard: the bench aborts (and cleans up) after this long. */
export const runTimeoutMs = 45 * 60 * 1000;
