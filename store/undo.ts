// An undo journal for the replicated state tables, so that dropping an unacknowledged log suffix
// rolls its effects back instead of rebuilding every table from entry 1.
//
// TEMP triggers on each state table record, for every row an entry inserts, updates or deletes, the
// SQL statement that reverses it, in a TEMP table (memory only, never in the WAL). The journal is
// written in the same transaction as the change it reverses, so a rollback removes both. It lives
// only as long as the connection: after a restart nothing is journaled yet, and a truncation below
// what the journal covers falls back to the full replay (Store.truncateAfter).
import type Database from "better-sqlite3";
import { assert } from "../connections/errors.js";

type Column = { name: string; type: string; pk: number };

export class UndoJournal {
  /** Log index of the entry being applied, or null while nothing should be journaled. */
  private current: number | null = null;
  /** Entries after this index are journaled: a truncation to an index at or above it can use undo. */
  private coveredAfter: number;
  private readonly statements;

  constructor(
    private readonly db: Database.Database,
    tables: readonly string[],
    lastIndex: number,
    /** The most entries kept journaled; older ones are dropped even if not known committed. */
    private readonly entriesMax: number,
  ) {
    this.coveredAfter = lastIndex;
    db.function("chatplus_undo_entry", { deterministic: false }, () => this.current);
    db.exec("CREATE TEMP TABLE IF NOT EXISTS undo (seq INTEGER PRIMARY KEY, idx INTEGER NOT NULL, sql TEXT NOT NULL)");
    for (const table of tables) this.createTriggers(table);
    this.statements = {
      prune: db.prepare("DELETE FROM temp.undo WHERE idx <= ?"),
      after: db.prepare("SELECT sql FROM temp.undo WHERE idx > ? ORDER BY seq DESC"),
      dropAfter: db.prepare("DELETE FROM temp.undo WHERE idx > ?"),
      clear: db.prepare("DELETE FROM temp.undo"),
    };
  }

  /**
   * Journals what `apply` changes as the effects of entry `index`; not for an entry at or below what
   * the journal covers (known committed: a catching-up backup's entries), which is never undone.
   */
  record<T>(index: number, apply: () => T): T {
    if (index <= this.coveredAfter) return apply();
    this.current = index;
    try {
      return apply();
    } finally {
      this.current = null;
    }
  }

  /**
   * Forgets the undo records of entries that can never be truncated (at or below the commit index)
   * and of entries beyond the size bound. Call inside the write transaction that follows.
   */
  prune(committed: number, lastIndex: number): void {
    const upTo = Math.max(committed, lastIndex - this.entriesMax);
    if (upTo <= this.coveredAfter) return;
    this.statements.prune.run(upTo);
    this.coveredAfter = upTo;
  }

  covers(index: number): boolean {
    return index >= this.coveredAfter;
  }

  /** Reverses every journaled change of the entries after `index`, newest first. Inside a transaction. */
  undoAfter(index: number): void {
    assert(this.covers(index), `undo journal covers entries after ${index}`);
    assert(this.current === null, "no entry is being applied while undoing");
    // Read first, then run: better-sqlite3 allows no other statement while one is iterating.
    for (const row of this.statements.after.all(index) as { sql: string }[]) this.db.exec(row.sql);
    this.statements.dropAfter.run(index);
  }

  /** After a full rebuild: nothing before `lastIndex` can be undone. */
  reset(lastIndex: number): void {
    this.statements.clear.run();
    this.coveredAfter = lastIndex;
  }

  private createTriggers(table: string): void {
    const columns = this.db.prepare(`PRAGMA main.table_info(${table})`).all() as Column[];
    // quote() renders INTEGER, TEXT and NULL exactly; a REAL could lose digits.
    for (const column of columns) assert(!/REAL|FLOA|DOUB/i.test(column.type), `${table}.${column.name} is not floating point`);
    const keys = columns.filter((column) => column.pk > 0).sort((a, b) => a.pk - b.pk);
    assert(keys.length > 0, `${table} has a primary key`);
    // The row as it is after the change: an update restores every column, keys included, by it.
    const where = keys.map((key) => `'${key.name} = ' || quote(new.${key.name})`).join(" || ' AND ' || ");
    const names = columns.map((column) => column.name).join(", ");
    const values = columns.map((column) => `quote(old.${column.name})`).join(" || ', ' || ");
    const assignments = columns.map((column) => `'${column.name} = ' || quote(old.${column.name})`).join(" || ', ' || ");
    const journal = (sql: string) => `INSERT INTO temp.undo (idx, sql) VALUES (chatplus_undo_entry(), ${sql});`;
    const when = "WHEN chatplus_undo_entry() IS NOT NULL";
    this.db.exec(`
      CREATE TEMP TRIGGER IF NOT EXISTS undo_${table}_insert AFTER INSERT ON main.${table} ${when} BEGIN
        ${journal(`'DELETE FROM main.${table} WHERE ' || ${where}`)}
      END;
      CREATE TEMP TRIGGER IF NOT EXISTS undo_${table}_update AFTER UPDATE ON main.${table} ${when} BEGIN
        ${journal(`'UPDATE main.${table} SET ' || ${assignments} || ' WHERE ' || ${where}`)}
      END;
      CREATE TEMP TRIGGER IF NOT EXISTS undo_${table}_delete AFTER DELETE ON main.${table} ${when} BEGIN
        ${journal(`'INSERT INTO main.${table} (${names}) VALUES (' || ${values} || ')'`)}
      END;`);
  }
}
