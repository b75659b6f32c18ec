// Fake durable storage for one simulated server: the log and the promised epoch, in memory.
// It mirrors store/store.ts (and the CachedLog in connections/manager.ts) for everything the core
// reads through LogView, and keeps the Store's own assertions: indexes are contiguous and epochs never
// go down along the log. Durability model: entries a backup persists are durable at once (one SQLite
// transaction); the primary's own proposals are visible in the log as soon as they are written but
// durable only after its "fsync" (the transaction commit), so a crash in between loses them.
import type { LogView } from "../../core/replica.js";
import type { ConfigCommand, LogEntry } from "../../store/commands.js";

export type StorageViolation = { kind: "epoch" | "crash" | "duplicated"; message: string };

const keys = new WeakMap<LogEntry, string>();

/** A compact identity for an entry: equal keys mean equal entries as the real Store would see them. */
export function entryKey(entry: LogEntry): string {
  let key = keys.get(entry);
  if (key === undefined) {
    const command = entry.command;
    const detail = command.op === "config" ? `${command.primary}/${command.members.join(",")}` : "";
    key = `${entry.index}:${entry.epoch}:${entry.clientId ?? "-"}#${entry.requestId ?? "-"}:${command.op}${detail}`;
    keys.set(entry, key);
  }
  return key;
}

export function requestKey(clientId: string, requestId: number): string {
  return `${clientId}#${requestId}`;
}

export class SimStorage implements LogView {
  private readonly log: LogEntry[] = [];
  /** Entries [0, durableLength) survive a crash. */
  private durableLength = 0;
  private readonly configIndexes: number[] = [];
  /** (clientId, requestId) -> log index, as the Store's exactly-once index. */
  private readonly dedup = new Map<string, number>();
  private bootstrapIndex = 0;
  promisedEpoch = 0;

  constructor(private readonly report: (violation: StorageViolation) => void) {}

  // ---- LogView -----------------------------------------------------------------

  get lastIndex(): number {
    return this.log.length;
  }

  get lastEpoch(): number {
    return this.log.length === 0 ? 0 : this.log[this.log.length - 1].epoch;
  }

  epochAt(index: number): number {
    if (index === 0) return 0;
    const entry = this.log[index - 1];
    if (entry === undefined) throw new Error(`assertion failed: entry ${index} exists (log ends at ${this.log.length})`);
    return entry.epoch;
  }

  /** Like SELECT ... WHERE idx BETWEEN from AND to: only the entries that exist. */
  entries(from: number, to: number): LogEntry[] {
    const start = Math.max(1, from);
    const end = Math.min(this.log.length, to);
    if (end < start) return [];
    return this.log.slice(start - 1, end);
  }

  lastIndexAtOrBeforeEpoch(epoch: number): number {
    for (let index = this.log.length; index >= 1; index -= 1) if (this.log[index - 1].epoch <= epoch) return index;
    return 0;
  }

  lastConfig(): { index: number; epoch: number; config: ConfigCommand } | undefined {
    const index = this.configIndexes[this.configIndexes.length - 1];
    if (index === undefined) return undefined;
    const entry = this.log[index - 1];
    return { index, epoch: entry.epoch, config: entry.command as ConfigCommand };
  }

  // ---- store queries used by the shell -------------------------------------------

  entry(index: number): LogEntry | undefined {
    return this.log[index - 1];
  }

  all(): readonly LogEntry[] {
    return this.log;
  }

  hasBootstrap(): boolean {
    return this.bootstrapIndex > 0;
  }

  dedupLookup(clientId: string, requestId: number): number | undefined {
    return this.dedup.get(requestKey(clientId, requestId));
  }

  // ---- writes ----------------------------------------------------------------------

  /** Appends entries; `durable` false for the primary's proposals until sync(). */
  append(entries: readonly LogEntry[], durable: boolean): void {
    for (const entry of entries) {
      if (entry.index !== this.log.length + 1) throw new Error(`assertion failed: log index ${entry.index} follows ${this.log.length}`);
      if (entry.epoch < this.lastEpoch) {
        this.report({ kind: "epoch", message: `entry ${entry.index} has epoch ${entry.epoch} below the previous entry's ${this.lastEpoch}` });
        throw new Error(`assertion failed: epoch ${entry.epoch} does not go below ${this.lastEpoch}`);
      }
      if (entry.clientId !== null && entry.requestId !== null) {
        const key = requestKey(entry.clientId, entry.requestId);
        const previous = this.dedup.get(key);
        if (previous !== undefined) this.report({ kind: "duplicated", message: `request ${key} appended at ${entry.index} is already at ${previous}` });
        this.dedup.set(key, entry.index);
      }
      if (entry.command.op === "config") this.configIndexes.push(entry.index);
      if (entry.command.op === "bootstrap" && this.bootstrapIndex === 0) this.bootstrapIndex = entry.index;
      this.log.push(entry);
    }
    if (durable) this.durableLength = this.log.length;
  }

  /** The primary's transaction committed: everything written so far is durable. */
  sync(): void {
    this.durableLength = this.log.length;
  }

  /** Drops every entry after `index` (durably: the Store rewrites the log in one transaction). */
  truncateAfter(index: number): void {
    if (index < 0 || index > this.log.length) throw new Error(`assertion failed: truncate point ${index} within log of ${this.log.length}`);
    this.dropAfter(index);
    this.durableLength = Math.min(this.durableLength, index);
  }

  /** kill -9: whatever was not yet durable is gone. */
  crash(): number {
    const lost = this.log.length - this.durableLength;
    this.dropAfter(this.durableLength);
    return lost;
  }

  private dropAfter(index: number): void {
    while (this.log.length > index) {
      const entry = this.log.pop()!;
      if (entry.clientId !== null && entry.requestId !== null) {
        const key = requestKey(entry.clientId, entry.requestId);
        if (this.dedup.get(key) === entry.index) this.dedup.delete(key);
      }
      if (this.configIndexes[this.configIndexes.length - 1] === entry.index) this.configIndexes.pop();
      if (this.bootstrapIndex === entry.index) this.bootstrapIndex = 0;
    }
  }
}
