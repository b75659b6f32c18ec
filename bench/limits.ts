// Machine limits measured in the same run: what SQLite with the servers' pragmas can commit, and
// what a loopback TCP round trip between two processes costs. They bound what the cluster can do.
import Database from "better-sqlite3";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnWithPort, stopChildren } from "./child.js";
import { messageBody } from "./load.js";
import { summarize, type LatencySummary } from "./stats.js";

export type SqliteLimit = { rowsPerTransaction: number; rowsPerSecond: number; transactionsPerSecond: number; commitP50Ms: number; commitP99Ms: number; seconds: number };
export type RttLimit = { messages: number; summary: LatencySummary; roundTripsPerSecond: number };

const insertRowsMax = 2_000_000;

/**
 * Inserts 256-byte rows into a fresh temp database with the servers' pragmas (WAL, synchronous=FULL),
 * `rowsPerTransaction` rows per transaction, for about `seconds`. Uses the same directory as the
 * cluster's data (os.tmpdir()), so the same file system and disk.
 */
export function measureSqliteInserts(rowsPerTransaction: number, seconds: number): SqliteLimit {
  const dir = mkdtempSync(join(tmpdir(), "chatplus-bench-sqlite-"));
  const db = new Database(join(dir, "limit.db"));
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    // A rowid table, as the servers' log is (store/tables.ts).
    db.exec("CREATE TABLE log (idx INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, body TEXT NOT NULL)");
    const insert = db.prepare("INSERT INTO log (idx, epoch, body) VALUES (?, ?, ?)");
    const body = JSON.stringify({ op: "post", actor: 1, channel: "general", body: messageBody, ts: Date.now() });
    let next = 1;
    const batch = db.transaction((count: number) => {
      for (let row = 0; row < count; row += 1) insert.run(next++, 1, body);
    });
    const commitTimes: number[] = [];
    const started = performance.now();
    const deadline = started + seconds * 1000;
    while (performance.now() < deadline && next < insertRowsMax) {
      const before = performance.now();
      batch.immediate(rowsPerTransaction);
      commitTimes.push(performance.now() - before);
    }
    const elapsed = (performance.now() - started) / 1000;
    const rows = next - 1;
    const commits = summarize(commitTimes);
    return {
      rowsPerTransaction,
      rowsPerSecond: rows / elapsed,
      transactionsPerSecond: commitTimes.length / elapsed,
      commitP50Ms: commits.p50,
      commitP99Ms: commits.p99,
      seconds: elapsed,
    };
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Spawns a child echo server (bench/echo-server.ts) and measures the round trip of small
 * newline-framed messages over loopback TCP, one at a time, for about `seconds`.
 */
export async function measureLoopbackRtt(seconds: number, messagesMax = 200_000): Promise<RttLimit> {
  const echo = await spawnWithPort("echo-server.ts");
  try {
    const socket = net.connect({ host: "127.0.0.1", port: echo.port, noDelay: true });
    await new Promise<void>((done, fail) => {
      socket.once("connect", () => done());
      socket.once("error", fail);
    });
    const message = `${JSON.stringify({ v: 1, id: 1, type: "ping" })}\n`;
    const times: number[] = [];
    let waiting: (() => void) | undefined;
    socket.on("data", () => waiting?.());
    const started = performance.now();
    const deadline = started + seconds * 1000;
    while (performance.now() < deadline && times.length < messagesMax) {
      const before = performance.now();
      await new Promise<void>((done) => {
        waiting = done;
        socket.write(message);
      });
      times.push(performance.now() - before);
    }
    const elapsed = (performance.now() - started) / 1000;
    socket.destroy();
    return { messages: times.length, summary: summarize(times), roundTripsPerSecond: times.length / elapsed };
  } finally {
    await stopChildren([echo]);
  }
}

export type LastConfigCost = {
  entriesSinceConfig: number;
  /** Store.lastConfig(), which the Store answers from memory. */
  msPerCall: number;
  /** The on-disk query the Store loads that from: when it opens, after a truncation or a replay, and after a failed write. */
  queryMsPerCall: number;
};
export type LastConfigProbe = { sql: string; plan: string; costs: LastConfigCost[] };

/** Calls timed per point: the in-memory answer takes nanoseconds, so it needs many more than the query. */
const lastConfigCallsPerPoint = 100_000;
const lastConfigQueriesPerPoint = 20;

/**
 * The cost of Store.lastConfig() (the product's own Store, on a temp file) and of the query it loads
 * its answer from, as the number of log entries after the newest config entry grows. Rows are
 * inserted straight into the log table (both only read `log`), so this takes seconds rather than a
 * replicated load; the Store is reopened at each point, as a restarted server opens it.
 */
export async function measureLastConfig(points: number[]): Promise<LastConfigProbe> {
  const { Store } = await import("../store/store.js");
  const dir = mkdtempSync(join(tmpdir(), "chatplus-bench-lastconfig-"));
  const path = join(dir, "chat.db");
  let store = new Store(path, "normal");
  try {
    const command = JSON.stringify({ op: "post", actor: 1, channel: "general", body: messageBody, ts: 0 });
    const insertRows = (from: number, to: number) => {
      const insert = store.db.prepare("INSERT INTO log (idx, epoch, kind, client_id, request_id, body) VALUES (?, 1, ?, ?, ?, ?)");
      store.db.transaction(() => {
        if (from === 1) insert.run(1, "config", null, null, JSON.stringify({ op: "config", primary: 1, members: [1, 2, 3] }));
        for (let index = Math.max(from, 2); index <= to; index += 1) insert.run(index, "command", "bench", index, command);
      })();
    };
    // The statement the Store really uses (better-sqlite3 keeps its SQL in .source).
    const statementOf = (opened: InstanceType<typeof Store>) => (opened as unknown as { statements: { lastConfig: { source: string; get(): unknown } } }).statements.lastConfig;
    let last = 0;
    const costs: LastConfigCost[] = [];
    for (const target of [...points].sort((a, b) => a - b)) {
      insertRows(last + 1, target + 1);
      last = target + 1;
      store.close();
      store = new Store(path, "normal");
      if (store.lastConfig()?.index !== 1) throw new Error("the reopened store finds the config entry");
      const started = performance.now();
      // The answers are summed and checked so that the calls cannot be optimized away.
      let indexes = 0;
      for (let call = 0; call < lastConfigCallsPerPoint; call += 1) indexes += store.lastConfig()!.index;
      const msPerCall = (performance.now() - started) / lastConfigCallsPerPoint;
      if (indexes !== lastConfigCallsPerPoint) throw new Error("every call found the config entry at index 1");
      const query = statementOf(store);
      const queryStarted = performance.now();
      for (let call = 0; call < lastConfigQueriesPerPoint; call += 1) query.get();
      costs.push({ entriesSinceConfig: target, msPerCall, queryMsPerCall: (performance.now() - queryStarted) / lastConfigQueriesPerPoint });
    }
    const sql = statementOf(store).source;
    const plan = (store.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[]).map((row) => row.detail).join("; ");
    return { sql, plan, costs };
  } finally {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
