// The durable log and the state it produces, in one SQLite file.
// An entry is normally written to `log` and applied to the state tables in the same transaction, so
// a crash leaves either both or neither. A backup catching up on entries the primary has already
// committed logs them first and applies them afterwards (appendEntries with deferApply): it is back in
// the in-sync set once its log holds them. The `applied_index` meta row, written in the same
// transactions, says how far the state tables go whenever they are behind the log.
import Database from "better-sqlite3";
import { createHash } from "node:crypto";
import { closeSync, fdatasync, fdatasyncSync, fstatSync, openSync, statSync } from "node:fs";
import { transactionLogBytesMax } from "../connections/consts.js";
import { assert } from "../connections/errors.js";
import { StateMachine } from "./apply.js";
import { type ApplyResult, type Command, type ConfigCommand, type LogEntry } from "./commands.js";
import { logTablesSql, schemaVersion, stateTableNames, stateTablesSql } from "./tables.js";
import { UndoJournal } from "./undo.js";

/** Entries the undo journal keeps at most (far above the in-flight bound); beyond it truncation replays. */
const undoEntriesMax = 20_000;
/** Meta key present only while the state tables are behind the log: the last entry they reflect. */
const appliedIndexKey = "applied_index";
/** Meta key: the log entries up to this index have their request ids in request_index. */
const requestIndexKey = "request_index_upto";
/**
 * Committed entries moved from memory to request_index at a time. Larger chunks touch each client's
 * index page once for more of its writes; the memory held and the time one move takes grow with it.
 */
const requestIndexChunkEntries = 1024;

export type Durability = "full" | "normal";

/** A stored answer to (clientId, requestId): the entry that carried it, its command, and the response. */
export type DedupRecord = { logIndex: number; command: Command; data: Record<string, unknown> };

/** Result of applying one proposed command on the primary. */
export type Proposal = { entry: LogEntry; result: ApplyResult };

export class Store {
  readonly db: Database.Database;
  readonly machine: StateMachine;
  private readonly statements;
  private last: { index: number; epoch: number };
  /** The last entry the state tables reflect; below `last` only while logged entries wait to be applied. */
  private applied: number;
  /** The newest config entry and whether a bootstrap entry exists, kept in memory: asked on every tick. */
  private newestConfig: { index: number; epoch: number; config: ConfigCommand } | undefined;
  private bootstrapped = false;
  private readonly undo: UndoJournal;
  /** The highest index this server knows is committed: its undo records can go. */
  private committedHint = 0;
  /**
   * Exactly-once lookups: entries up to `requestIndexUpTo` are found through the request_index table,
   * later ones through `recentRequests` ((clientId, requestId) -> log index), in log order. Only
   * committed entries are moved to the table, so a truncation never reaches into it.
   */
  private requestIndexUpTo: number;
  private readonly recentRequests = new Map<string, number>();
  /**
   * Per clientId, a request id at least as high as any it has logged: a request above it is new, and
   * its lookup needs no query. Clients number their requests upwards (docs/protocol.md §1.5), so that
   * is almost every write. One number per clientId the log has seen.
   */
  private readonly highestRequestId = new Map<string, number>();
  /** Our own descriptor of the -wal file, for syncing a batch committed with synchronous=NORMAL off the event loop. */
  private walFd: number | null = null;
  private walChecks = 0;
  private readonly walPath: string;

  constructor(
    path: string,
    /** "normal" never fsyncs a commit (benchmarks only), so it has nothing to sync later either. */
    readonly durability: Durability = "full",
    /**
     * Bytes a write transaction logs before it applies no more entries (connections/consts.ts
     * transactionLogBytesMax). Each transaction applies at least one entry.
     */
    private readonly logBytesPerTransactionMax = transactionLogBytesMax,
  ) {
    assert(logBytesPerTransactionMax > 0, "a transaction may log some bytes");
    this.db = new Database(path);
    this.walPath = `${path}-wal`;
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("foreign_keys = OFF");
    // TEMP tables (the undo journal) in memory, as undo.ts intends: this build's default is a
    // temporary file, which commits wrote to (0.25 of 6.75 KB written per write, store-only benchmark).
    this.db.pragma("temp_store = MEMORY");
    this.checkSchemaVersion();
    this.db.exec(logTablesSql);
    this.db.exec(stateTablesSql);
    this.machine = new StateMachine(this.db);
    const s = (sql: string) => this.db.prepare(sql);
    this.statements = {
      insertEntry: s("INSERT INTO log (idx, epoch, kind, client_id, request_id, body, response) VALUES (?, ?, ?, ?, ?, ?, ?)"),
      entry: s("SELECT * FROM log WHERE idx = ?"),
      range: s("SELECT * FROM log WHERE idx >= ? AND idx <= ? ORDER BY idx"),
      lastEntry: s("SELECT idx, epoch FROM log ORDER BY idx DESC LIMIT 1"),
      // "kind != 'command'" lets SQLite use the partial index log_kind instead of scanning the log.
      lastConfig: s("SELECT * FROM log WHERE kind = 'config' AND kind != 'command' ORDER BY idx DESC LIMIT 1"),
      hasBootstrap: s("SELECT 1 FROM log WHERE kind = 'bootstrap' AND kind != 'command' LIMIT 1"),
      deleteAfter: s("DELETE FROM log WHERE idx > ?"),
      lastIndexAtOrBeforeEpoch: s("SELECT max(idx) AS idx FROM log WHERE epoch <= ?"),
      dedupGet: s("SELECT log.idx, log.body, log.response FROM request_index JOIN log ON log.idx = request_index.idx WHERE request_index.client_id = ? AND request_index.request_id = ?"),
      dedupAt: s("SELECT idx, body, response FROM log WHERE idx = ?"),
      recentRequests: s("SELECT idx, client_id, request_id FROM log WHERE idx > ? AND request_id IS NOT NULL ORDER BY idx"),
      nextIndexedClient: s("SELECT client_id FROM request_index WHERE client_id > ? ORDER BY client_id LIMIT 1"),
      highestIndexedRequest: s("SELECT max(request_id) AS highest FROM request_index WHERE client_id = ?"),
      // One statement for a whole chunk: each client's index page is written once per chunk, not once
      // per commit. Not sorted by key first: the pages a transaction dirties are the same in any
      // order, and the sort cost a catch-up a third of its time.
      moveRequests: s("INSERT INTO request_index (client_id, request_id, idx) SELECT client_id, request_id, idx FROM log WHERE idx > ? AND idx <= ? AND request_id IS NOT NULL"),
      // Prepared once: db.exec would compile these on every command of every batch.
      savepoint: s("SAVEPOINT command"),
      syncNormal: s("PRAGMA synchronous = NORMAL"),
      syncFull: s("PRAGMA synchronous = FULL"),
      release: s("RELEASE command"),
      rollbackTo: s("ROLLBACK TO command"),
      metaGet: s("SELECT value FROM meta WHERE key = ?"),
      metaPut: s("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
      metaDelete: s("DELETE FROM meta WHERE key = ?"),
      setResponse: s("UPDATE log SET response = ? WHERE idx = ?"),
    };
    // FULL: every commit fsyncs the WAL, so an acknowledged write survives power loss, not just a
    // process crash. "normal" exists only as an explicit, documented benchmark option. Set only now:
    // SQLite applies "PRAGMA synchronous = ..." when the statement is prepared, so preparing syncFull
    // above switches the connection to FULL (a "normal" store once fsynced every commit that way).
    this.db.pragma(`synchronous = ${durability === "full" ? "FULL" : "NORMAL"}`);
    const row = this.statements.lastEntry.get() as { idx: number; epoch: number } | undefined;
    this.last = row ? { index: row.idx, epoch: row.epoch } : { index: 0, epoch: 0 };
    const applied = this.getMeta(appliedIndexKey);
    this.applied = applied === undefined ? this.last.index : Number(applied);
    assert(Number.isSafeInteger(this.applied) && this.applied >= 0 && this.applied <= this.last.index, `applied index ${applied} within the log`);
    this.undo = new UndoJournal(this.db, stateTableNames, this.last.index, undoEntriesMax);
    this.requestIndexUpTo = Number(this.getMeta(requestIndexKey) ?? "0");
    assert(Number.isSafeInteger(this.requestIndexUpTo) && this.requestIndexUpTo >= 0 && this.requestIndexUpTo <= this.last.index, `request index ${this.requestIndexUpTo} within the log`);
    this.loadHighestRequestIds();
    this.loadRecentRequests();
    this.loadLogSummary();
  }

  /** A brand-new file gets the current version; a file of another version is refused, not guessed at. */
  private checkSchemaVersion(): void {
    const version = this.db.pragma("user_version", { simple: true }) as number;
    const hasTables = this.db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").get() !== undefined;
    if (!hasTables) {
      this.db.pragma(`user_version = ${schemaVersion}`);
      return;
    }
    if (version !== schemaVersion) {
      const problem = `${this.db.name} holds data format ${version}, and this server reads and writes format ${schemaVersion}: start it on an empty data directory (the runner's --fresh)`;
      this.db.close();
      throw new Error(problem);
    }
  }

  /** Reads the newest config and the bootstrap flag from disk (startup, truncation, rollback). */
  private loadLogSummary(): void {
    const row = this.statements.lastConfig.get() as LogRow | undefined;
    if (row) {
      const entry = rowToEntry(row);
      assert(entry.command.op === "config", "config row holds a config command");
      this.newestConfig = { index: entry.index, epoch: entry.epoch, config: entry.command };
    } else this.newestConfig = undefined;
    this.bootstrapped = this.statements.hasBootstrap.get() !== undefined;
  }

  get lastIndex(): number {
    return this.last.index;
  }
  get lastEpoch(): number {
    return this.last.epoch;
  }
  /** The last entry the state tables reflect (lastIndex unless logged entries wait to be applied). */
  get appliedIndex(): number {
    return this.applied;
  }
  /** Logged entries not applied yet. */
  get pendingApply(): number {
    return this.last.index - this.applied;
  }

  close(): void {
    if (this.walFd !== null) closeSync(this.walFd);
    this.walFd = null;
    if (this.db.open) this.db.close();
  }

  /**
   * Makes every commit so far durable, on libuv's thread pool, then calls `done`: for a batch
   * proposed with `syncLater`. An fdatasync of the -wal file covers every frame written before it.
   */
  syncLog(done: (error: Error | null) => void): void {
    fdatasync(this.wal(), done);
  }

  /** The same, on this thread, before returning. */
  syncLogNow(): void {
    fdatasyncSync(this.wal());
  }

  private wal(): number {
    const walPath = this.walPath;
    if (this.walFd === null) {
      this.walFd = openSync(walPath, "r");
      this.walChecks = 0;
    }
    // SQLite keeps its -wal file while the connection is open. Check now and then that ours is it:
    // a sync of some other file would be silent data loss.
    if (this.walChecks++ % 1000 === 0) assert(fstatSync(this.walFd).ino === statSync(walPath).ino, "the -wal descriptor is SQLite's file");
    return this.walFd;
  }

  // ---- primary path ----------------------------------------------------------

  /**
   * Applies commands as new entries starting at lastIndex + 1, in one transaction (group commit).
   * A command that fails leaves no trace: its savepoint is rolled back and it gets no log index.
   * `beforeCommit` runs inside the transaction once the entries are known, so the caller can ship
   * them to the backups while this server's own fsync runs.
   * Once the transaction has logged logBytesPerTransactionMax bytes it takes no more commands: the
   * proposals returned are those of the first commands, in order, and the caller proposes the rest
   * later (each call takes at least one).
   */
  proposeBatch(
    epoch: number,
    commands: { clientId: string | null; requestId: number | null; command: Command }[],
    beforeCommit: (entries: LogEntry[]) => void = () => {},
    options: { syncLater?: boolean } = {},
  ): Proposal[] {
    // A proposal is checked and applied against the state, so the state must reflect the whole log.
    assert(this.pendingApply === 0, `every logged entry is applied before proposing (${this.pendingApply} are not)`);
    const proposals: Proposal[] = [];
    const run = this.db.transaction(() => {
      this.undo.prune(this.committedHint, this.last.index);
      let next = this.last.index + 1;
      let logged = 0;
      for (const item of commands) {
        if (logged >= this.logBytesPerTransactionMax) break;
        this.statements.savepoint.run();
        const entry: LogEntry = { index: next, epoch, clientId: item.clientId, requestId: item.requestId, command: item.command };
        const index = next;
        const result = this.undo.record(index, () => this.machine.apply(index, item.command));
        if (!result.ok) {
          this.statements.rollbackTo.run();
          this.statements.release.run();
          proposals.push({ entry: { ...entry, index: 0 }, result });
          continue;
        }
        logged += this.writeEntry(entry, result);
        this.statements.release.run();
        proposals.push({ entry, result });
        next += 1;
      }
      beforeCommit(proposals.filter((p) => p.result.ok).map((p) => p.entry));
      this.moveRequestsToIndex();
    });
    // syncLater: the COMMIT writes the WAL without an fsync, and the caller counts these entries as
    // durable only once syncLog (or any later commit with synchronous=FULL) has synced the file.
    // A checkpoint syncs the WAL before copying from it, in NORMAL as in FULL.
    this.runWritingSynced(run, options.syncLater === true);
    return proposals;
  }

  /** runWriting; with `syncLater` the COMMIT writes the WAL without an fsync (see proposeBatch). */
  private runWritingSynced(run: Database.Transaction<() => void>, syncLater: boolean): void {
    assert(!syncLater || this.durability === "full", "a batch is synced later only where commits fsync");
    if (syncLater) this.statements.syncNormal.run();
    try {
      this.runWriting(run);
    } finally {
      if (syncLater) this.statements.syncFull.run();
    }
  }

  // ---- backup path -------------------------------------------------------------

  /**
   * Appends entries received from the primary, in one transaction. Normally they are applied in it
   * too, until the entries applied have logged `applyBytesMax` bytes (default
   * logBytesPerTransactionMax): the caller's budget for this turn, which several appends of one peer
   * read share. With `deferApply` (entries the primary has already committed: a catch-up), while
   * earlier entries still wait, or past that budget, they are only logged, with no response yet;
   * applyPending applies them later, in order. Returns the bytes the applied entries logged.
   * A logged entry is as durable as an applied one: the state can always be rebuilt from it.
   * With `syncLater` the COMMIT does not fsync, as in proposeBatch: the caller tells nobody about these
   * entries until syncLogNow (or a later commit with synchronous=FULL) has synced the file.
   */
  appendEntries(entries: LogEntry[], options: { deferApply?: boolean; syncLater?: boolean; applyBytesMax?: number } = {}): number {
    const logOnly = options.deferApply === true || this.pendingApply > 0;
    const applyBytesMax = options.applyBytesMax ?? this.logBytesPerTransactionMax;
    let logged = 0;
    const run = this.db.transaction(() => {
      this.undo.prune(this.committedHint, this.last.index);
      if (logOnly) {
        if (this.pendingApply === 0 && entries.length > 0) this.statements.metaPut.run(appliedIndexKey, String(this.applied));
        // A catch-up's entries are all committed: once the table holds everything before them, their
        // requests go straight into it, in log order (the catch-up path is measured by the bench).
        const committed = entries.length > 0 && entries[entries.length - 1].index <= this.committedHint;
        if (committed) this.moveRequestsToIndex(1);
        const indexNow = committed && this.requestIndexUpTo === this.last.index;
        const before = this.last.index;
        for (const entry of entries) this.writeLogRow(entry, null, indexNow);
        if (indexNow) {
          // One statement for the whole batch: the primary key refuses a second entry for a request.
          this.statements.moveRequests.run(before, this.last.index);
          this.noteRequestsIndexedUpTo(this.last.index);
        }
      } else {
        for (const entry of entries) {
          if (this.pendingApply === 0 && logged < applyBytesMax) {
            logged += this.writeEntry(entry, this.applyReplicated(entry));
            continue;
          }
          // Past the bound: the state tables stop at the last entry applied, until applyPending.
          if (this.pendingApply === 0) this.statements.metaPut.run(appliedIndexKey, String(this.applied));
          this.writeLogRow(entry, null);
        }
      }
      this.moveRequestsToIndex();
    });
    this.runWritingSynced(run, options.syncLater === true);
    return logged;
  }

  /**
   * Applies up to `entriesMax` logged entries that wait, oldest first, in one transaction, filling in
   * their responses, and stops early once their responses reach logBytesPerTransactionMax bytes.
   * Returns how many still wait.
   */
  applyPending(entriesMax: number): number {
    assert(entriesMax > 0, "applies at least one entry");
    if (this.pendingApply === 0) return 0;
    const to = Math.min(this.last.index, this.applied + entriesMax);
    const entries = this.entries(this.applied + 1, to);
    assert(entries.length === to - this.applied, `log holds entries ${this.applied + 1}..${to}`);
    const run = this.db.transaction(() => {
      this.undo.prune(this.committedHint, this.last.index);
      let logged = 0;
      for (const entry of entries) {
        if (logged >= this.logBytesPerTransactionMax) break;
        const result = this.applyReplicated(entry);
        if (hasRequestId(entry)) {
          const response = encodeResponse(entry.command, result.data);
          this.statements.setResponse.run(response, entry.index);
          logged += response.length;
        }
        this.applied = entry.index;
      }
      if (this.applied === this.last.index) this.statements.metaDelete.run(appliedIndexKey);
      else this.statements.metaPut.run(appliedIndexKey, String(this.applied));
      this.moveRequestsToIndex();
    });
    this.runWriting(run);
    return this.pendingApply;
  }

  /** Applies an entry the primary already applied: it must succeed here too. */
  private applyReplicated(entry: LogEntry): ApplyResult & { ok: true } {
    assert(entry.index === this.applied + 1, `entry ${entry.index} is applied right after ${this.applied}`);
    const result = this.undo.record(entry.index, () => this.machine.apply(entry.index, entry.command));
    // The primary applied this exact command at this exact state; anything else is divergence.
    assert(result.ok, `entry ${entry.index} (${entry.command.op}) failed on replay: ${!result.ok && result.message}`);
    return result;
  }

  /** Runs a write transaction; if it fails, our idea of the log's end goes back with the rollback. */
  private runWriting(run: Database.Transaction<() => void>): void {
    const before = this.last;
    const appliedBefore = this.applied;
    const requestIndexBefore = this.requestIndexUpTo;
    try {
      run.immediate();
    } catch (error) {
      this.last = before;
      this.applied = appliedBefore;
      this.requestIndexUpTo = requestIndexBefore;
      this.loadRecentRequests();
      this.loadLogSummary();
      throw error;
    }
    this.forgetMovedRequests();
  }

  // ---- the exactly-once index ---------------------------------------------------

  /**
   * Moves the committed entries' request ids from memory to request_index, once at least
   * `entriesMin` of them wait, and at most four chunks per transaction. Inside a write transaction.
   */
  private moveRequestsToIndex(entriesMin = requestIndexChunkEntries): void {
    const upTo = Math.min(this.committedHint, this.last.index, this.requestIndexUpTo + 4 * requestIndexChunkEntries);
    if (upTo - this.requestIndexUpTo < entriesMin) return;
    this.statements.moveRequests.run(this.requestIndexUpTo, upTo);
    this.noteRequestsIndexedUpTo(upTo);
  }

  private noteRequestsIndexedUpTo(index: number): void {
    this.statements.metaPut.run(requestIndexKey, String(index));
    this.requestIndexUpTo = index;
  }

  /** After a commit: the moved entries are found through the table now. */
  private forgetMovedRequests(): void {
    // Insertion order is log order (entries are logged in order and truncation takes the newest).
    for (const [key, index] of this.recentRequests) {
      if (index > this.requestIndexUpTo) break;
      this.recentRequests.delete(key);
    }
  }

  /** Per clientId in request_index, its highest request id: two index seeks per client. */
  private loadHighestRequestIds(): void {
    let row = this.statements.nextIndexedClient.get("") as { client_id: string } | undefined;
    while (row) {
      const { highest } = this.statements.highestIndexedRequest.get(row.client_id) as { highest: number };
      this.highestRequestId.set(row.client_id, highest);
      row = this.statements.nextIndexedClient.get(row.client_id) as { client_id: string } | undefined;
    }
  }

  /** Rebuilds the in-memory part from the log (opening, or after a write transaction failed). */
  private loadRecentRequests(): void {
    this.recentRequests.clear();
    for (const row of this.statements.recentRequests.iterate(this.requestIndexUpTo) as Iterable<{ idx: number; client_id: string; request_id: number }>) {
      this.recentRequests.set(requestKey(row.client_id, row.request_id), row.idx);
      this.noteRequestId(row.client_id, row.request_id);
    }
  }

  /** Only ever raised: after a rollback or truncation it may be too high, which only costs a query. */
  private noteRequestId(clientId: string, requestId: number): void {
    if (requestId > (this.highestRequestId.get(clientId) ?? -Infinity)) this.highestRequestId.set(clientId, requestId);
  }

  /** Logs an entry and records it as applied (the caller applied it in the same transaction). Returns the bytes logged. */
  private writeEntry(entry: LogEntry, result: ApplyResult & { ok: true }): number {
    // The response is kept only where a retry can ask for it again.
    const logged = this.writeLogRow(entry, hasRequestId(entry) ? encodeResponse(entry.command, result.data) : null);
    this.applied = entry.index;
    return logged;
  }

  /**
   * Returns the bytes logged: the command's and the response's characters (a bound on work, not an
   * exact size). `indexNow`: a committed entry whose request the caller puts straight into
   * request_index (catch-up).
   */
  private writeLogRow(entry: LogEntry, response: string | null, indexNow = false): number {
    assert(entry.index === this.last.index + 1, `log index ${entry.index} follows ${this.last.index}`);
    assert(entry.epoch >= this.last.epoch, `epoch ${entry.epoch} does not go below ${this.last.epoch}`);
    const kind = entry.command.op === "config" || entry.command.op === "bootstrap" ? entry.command.op : "command";
    const body = JSON.stringify(entry.command);
    this.statements.insertEntry.run(entry.index, entry.epoch, kind, entry.clientId, entry.requestId, body, response);
    if (hasRequestId(entry)) {
      const clientId = entry.clientId!;
      const requestId = entry.requestId!;
      // Held in memory unless it goes to request_index now, or is there already (a replay rewrites those).
      if (!indexNow && entry.index > this.requestIndexUpTo) {
        const key = requestKey(clientId, requestId);
        // The primary looked the request up before proposing it; a second entry for it is divergence.
        assert(!this.recentRequests.has(key), `request ${requestId} of client ${clientId} is logged once`);
        this.recentRequests.set(key, entry.index);
      }
      this.noteRequestId(clientId, requestId);
    }
    if (entry.command.op === "config") this.newestConfig = { index: entry.index, epoch: entry.epoch, config: entry.command };
    if (entry.command.op === "bootstrap") this.bootstrapped = true;
    this.last = { index: entry.index, epoch: entry.epoch };
    return body.length + (response?.length ?? 0);
  }

  // ---- reading the log -------------------------------------------------------

  entry(index: number): LogEntry | undefined {
    const row = this.statements.entry.get(index) as LogRow | undefined;
    return row ? rowToEntry(row) : undefined;
  }

  entries(from: number, to: number): LogEntry[] {
    return (this.statements.range.all(from, to) as LogRow[]).map(rowToEntry);
  }

  epochAt(index: number): number {
    if (index === 0) return 0;
    const entry = this.entry(index);
    assert(entry, `entry ${index} exists`);
    return entry.epoch;
  }

  /** The last index whose epoch is <= epoch (for finding where a recovering log diverges). */
  lastIndexAtOrBeforeEpoch(epoch: number): number {
    const row = this.statements.lastIndexAtOrBeforeEpoch.get(epoch) as { idx: number | null };
    return row.idx ?? 0;
  }

  lastConfig(): { index: number; epoch: number; config: ConfigCommand } | undefined {
    return this.newestConfig;
  }

  hasBootstrap(): boolean {
    return this.bootstrapped;
  }

  /** The entry and response of an earlier write with this (clientId, requestId), if the log holds one. */
  dedupLookup(clientId: string, requestId: number): DedupRecord | undefined {
    if (requestId > (this.highestRequestId.get(clientId) ?? -Infinity)) return undefined;
    const recent = this.recentRequests.get(requestKey(clientId, requestId));
    const row = (recent !== undefined ? this.statements.dedupAt.get(recent) : this.statements.dedupGet.get(clientId, requestId)) as
      | { idx: number; body: string; response: string | null }
      | undefined;
    if (!row) return undefined;
    assert(row.response !== null, `log entry ${row.idx} with a request id holds its response`);
    const command = JSON.parse(row.body) as Command;
    return { logIndex: row.idx, command, data: decodeResponse(command, row.response) };
  }

  // ---- recovery --------------------------------------------------------------

  /** Entries up to `index` are committed: they are never truncated, so their undo records can go. */
  noteCommitted(index: number): void {
    this.committedHint = Math.max(this.committedHint, index);
  }

  /**
   * Drops every entry after `index` and puts the state tables back as they were after it. Only a
   * recovering server does this, for entries that were never acknowledged. Entries that were only
   * logged just go ("log"). Usually the undo journal holds the applied ones' changes and they are
   * reversed ("undo"); after a restart (or beyond the journal's bound) the state is rebuilt by
   * replaying the kept log from entry 1 ("replay").
   */
  truncateAfter(index: number): "log" | "undo" | "replay" {
    assert(index >= 0 && index <= this.last.index, `truncate point ${index} within log`);
    // Entries in request_index are committed, and a committed entry is never truncated.
    assert(index >= this.requestIndexUpTo, `truncate point ${index} keeps the committed entries up to ${this.requestIndexUpTo}`);
    if (index === this.last.index) return "log";
    const how = index >= this.applied ? "log" : this.undo.covers(index) ? "undo" : "replay";
    if (how === "replay") {
      this.replayUpTo(index);
      return how;
    }
    this.runWriting(
      this.db.transaction(() => {
        if (how === "undo") {
          this.undo.undoAfter(index);
          this.applied = index;
        }
        this.statements.deleteAfter.run(index);
        if (this.applied === index) this.statements.metaDelete.run(appliedIndexKey);
      }),
    );
    this.last = { index, epoch: this.epochAt(index) };
    this.loadRecentRequests();
    this.loadLogSummary();
    return how;
  }

  private replayUpTo(index: number): void {
    const kept = this.entries(1, index);
    this.db.transaction(() => {
      for (const table of stateTableNames) this.db.exec(`DELETE FROM ${table}`);
      this.statements.deleteAfter.run(index);
      this.last = { index: 0, epoch: 0 };
      // Rewrite the kept entries through the normal path so responses and state match a live server.
      this.db.exec("DELETE FROM log");
      this.recentRequests.clear();
      this.applied = 0;
      this.statements.metaDelete.run(appliedIndexKey);
      for (const entry of kept) {
        const result = this.machine.apply(entry.index, entry.command);
        assert(result.ok, `replay of entry ${entry.index} succeeds`);
        this.writeEntry(entry, result);
      }
    }).immediate();
    this.undo.reset(index);
    this.loadRecentRequests();
    this.loadLogSummary();
  }

  // ---- meta (per server, not replicated) -------------------------------------

  getMeta(key: string): string | undefined {
    return (this.statements.metaGet.get(key) as { value: string } | undefined)?.value;
  }

  /** Durable before it returns (synchronous=FULL). */
  putMeta(key: string, value: string): void {
    this.statements.metaPut.run(key, value);
  }

  // ---- digests -----------------------------------------------------------------

  /** SHA-256 over every replicated state table, rows in primary-key order. */
  stateDigest(): string {
    return stateDigestOf(this.db);
  }

  /** SHA-256 over log entries 1..upTo, responses included. */
  logDigest(upTo = this.last.index): string {
    return logDigestOf(this.db, upTo);
  }
}

/** Works on a read-only handle too, so tests can digest a live server's file. */
export function stateDigestOf(db: Database.Database): string {
  const hash = createHash("sha256");
  for (const table of stateTableNames) {
    hash.update(`table ${table}\n`);
    const columns = (db.prepare(`PRAGMA table_info(${table})`).all() as { name: string; pk: number }[])
      .filter((column) => column.pk > 0)
      .sort((a, b) => a.pk - b.pk)
      .map((column) => column.name);
    const order = columns.length > 0 ? columns.join(", ") : "rowid";
    for (const row of db.prepare(`SELECT * FROM ${table} ORDER BY ${order}`).iterate()) {
      hash.update(JSON.stringify(row));
      hash.update("\n");
    }
  }
  return hash.digest("hex");
}

export function logDigestOf(db: Database.Database, upTo: number): string {
  const hash = createHash("sha256");
  for (const row of db.prepare("SELECT idx, epoch, kind, client_id, request_id, body, response FROM log WHERE idx <= ? ORDER BY idx").iterate(upTo)) {
    hash.update(JSON.stringify(row));
    hash.update("\n");
  }
  return hash.digest("hex");
}

/**
 * The stored form of a response. A post or DM answers with the message it made, whose body is the
 * command's own: stored once, in the command, with null in the response (a body is never null), and
 * put back when a retry reads it. That is a quarter of the bytes of such an entry.
 */
function encodeResponse(command: Command, data: Record<string, unknown>): string {
  const message = data.message as { body?: unknown } | undefined;
  if ("body" in command && message !== undefined && message.body === command.body) return JSON.stringify({ ...data, message: { ...message, body: null } });
  return JSON.stringify(data);
}

function decodeResponse(command: Command, stored: string): Record<string, unknown> {
  const data = JSON.parse(stored) as Record<string, unknown>;
  const message = data.message as { body?: unknown } | undefined;
  if ("body" in command && message !== undefined && message.body === null) message.body = command.body;
  return data;
}

/** The key of a (clientId, requestId) pair in in-memory maps (here and in the manager's queue). */
export function requestKey(clientId: string, requestId: number): string {
  return `${clientId}\u0000${requestId}`;
}

function hasRequestId(entry: LogEntry): boolean {
  return entry.clientId !== null && entry.requestId !== null;
}

type LogRow = { idx: number; epoch: number; kind: string; client_id: string | null; request_id: number | null; body: string };

function rowToEntry(row: LogRow): LogEntry {
  const command = JSON.parse(row.body) as Command;
  // Check data read back before trusting it.
  assert(typeof command === "object" && command !== null && typeof command.op === "string", `log entry ${row.idx} holds a command`);
  return { index: row.idx, epoch: row.epoch, clientId: row.client_id, requestId: row.request_id, command };
}

/** Rebuilds a fresh database from the log alone, applying every entry in order. */
export function replayInto(target: Store, entries: Iterable<LogEntry>): void {
  const batch: LogEntry[] = [];
  for (const entry of entries) {
    batch.push(entry);
    if (batch.length >= 1000) target.appendEntries(batch.splice(0));
  }
  if (batch.length > 0) target.appendEntries(batch);
}
