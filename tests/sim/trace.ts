// The event trace of a run: one short line per event and action. Every line feeds a running SHA-256,
// so two runs of a seed can be compared byte for byte; the last lines are kept for failure reports.
import { createHash, type Hash } from "node:crypto";
import type { Action } from "../../core/replica.js";
import type { PeerMessage } from "../../core/messages.js";
import type { LogEntry } from "../../store/commands.js";

export class Trace {
  private readonly hash: Hash = createHash("sha256");
  private readonly tail: string[] = [];
  private tailStart = 0;
  lines = 0;

  constructor(
    private readonly tailMax: number,
    private readonly sink?: (line: string) => void,
  ) {}

  line(now: number, text: string): void {
    const line = `${now} ${text}`;
    this.hash.update(line);
    this.hash.update("\n");
    this.lines += 1;
    if (this.sink) this.sink(line);
    if (this.tail.length < this.tailMax) this.tail.push(line);
    else {
      this.tail[this.tailStart] = line;
      this.tailStart = (this.tailStart + 1) % this.tailMax;
    }
  }

  digest(): string {
    return this.hash.copy().digest("hex");
  }

  last(count: number): string[] {
    const ordered = [...this.tail.slice(this.tailStart), ...this.tail.slice(0, this.tailStart)];
    return ordered.slice(-count);
  }
}

function span(entries: readonly LogEntry[]): string {
  if (entries.length === 0) return "[]";
  const first = entries[0];
  const last = entries[entries.length - 1];
  return `[${first.index}..${last.index} e${first.epoch}${last.epoch === first.epoch ? "" : `-${last.epoch}`}]`;
}

export function formatMessage(message: PeerMessage): string {
  switch (message.t) {
    case "heartbeat": {
      const s = message.status;
      return `hb r${message.round} ${s.role}${s.serving ? "*" : ""}${s.eligible ? "+el" : ""} e${s.epoch} cfg${s.configEpoch}:${s.configPrimary ?? "-"}/${s.members.join(",")} last${s.lastIndex}/${s.lastEpoch} ci${s.commitIndex}`;
    }
    case "append":
      return `append e${message.epoch} prev${message.prevIndex}/${message.prevEpoch} ${span(message.entries as LogEntry[])} ci${message.commitIndex}`;
    case "fetch_reply":
      return `fetch_reply e${message.epoch} prev${message.prevIndex}/${message.prevEpoch} ${span(message.entries as LogEntry[])}`;
    default:
      return JSON.stringify(message);
  }
}

export function formatAction(action: Action): string {
  switch (action.type) {
    case "send":
      return `send ->${action.to} ${formatMessage(action.message)}`;
    case "persist":
      return `persist ${span(action.entries)}`;
    case "truncate":
      return `truncate after ${action.afterIndex}`;
    case "promise":
      return `promise e${action.epoch}`;
    case "propose_config":
      return `propose_config primary ${action.config.primary} members ${action.config.members.join(",")}`;
    case "commit":
      return `commit ${action.index}`;
    case "role":
      return `role ${action.role}${action.serving ? " serving" : ""} e${action.epoch} (${action.reason})`;
    case "frozen":
      return `frozen ${action.gapMs}ms`;
  }
}
