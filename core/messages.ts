// Messages between servers. Validated with zod at the edge (connections/peer.ts) before the core sees them.
import { z } from "zod";
import type { LogEntry } from "../store/commands.js";

const LogEntrySchema = z.object({
  index: z.number().int().min(1),
  epoch: z.number().int().min(0),
  clientId: z.string().nullable(),
  requestId: z.number().int().nullable(),
  command: z.looseObject({ op: z.string() }),
});

const epoch = z.number().int().min(0);
const index = z.number().int().min(0);

/** What every server tells every other server each heartbeat interval. */
export const StatusSchema = z.object({
  /** Highest epoch this server has promised or joined. */
  epoch,
  /** Epoch and members of the newest config entry in its log. */
  configEpoch: epoch,
  /** Log index of that config entry: within one epoch, a higher index is a newer config. */
  configIndex: index,
  configPrimary: z.number().int().nullable(),
  members: z.array(z.number().int()),
  role: z.enum(["recovering", "backup", "candidate", "primary"]),
  /** Primary whose config is committed and who is answering clients. */
  serving: z.boolean(),
  /** Running continuously since it persisted its config, and a member of it. */
  eligible: z.boolean(),
  lastIndex: index,
  lastEpoch: epoch,
  commitIndex: index,
});
export type Status = z.infer<typeof StatusSchema>;

export const PeerMessageSchema = z.discriminatedUnion("t", [
  z.object({ t: z.literal("heartbeat"), status: StatusSchema, round: z.number().int() }),
  z.object({ t: z.literal("heartbeat_ack"), epoch, round: z.number().int() }),
  z.object({ t: z.literal("append"), epoch, prevIndex: index, prevEpoch: epoch, entries: z.array(LogEntrySchema), commitIndex: index }),
  z.object({ t: z.literal("append_ack"), epoch, lastIndex: index }),
  /** The follower could not append: its log ends at lastIndex with lastEpoch. */
  z.object({ t: z.literal("append_nack"), epoch, lastIndex: index, lastEpoch: epoch }),
  /** A recovering server asks the primary to stream the log to it. */
  z.object({ t: z.literal("join"), lastIndex: index, lastEpoch: epoch }),
  /** The joiner's log diverges: it must drop entries after truncateTo (adjusted by its own epochs) and join again. */
  z.object({ t: z.literal("join_truncate"), epoch, truncateTo: index, truncateEpoch: epoch }),
  z.object({ t: z.literal("prepare"), epoch, configEpoch: epoch, configIndex: index }),
  z.object({ t: z.literal("prepare_ok"), epoch, lastIndex: index, lastEpoch: epoch, configEpoch: epoch, eligible: z.boolean() }),
  z.object({ t: z.literal("prepare_reject"), epoch, promised: epoch, configEpoch: epoch, reason: z.enum(["epoch", "lease", "config"]) }),
  z.object({ t: z.literal("fetch"), epoch, fromIndex: index }),
  z.object({ t: z.literal("fetch_reply"), epoch, prevIndex: index, prevEpoch: epoch, entries: z.array(LogEntrySchema) }),
  /** Your epoch is older than mine: step down. */
  z.object({ t: z.literal("stale"), epoch }),
]);
export type PeerMessage = z.infer<typeof PeerMessageSchema>;
export type PeerMessageOf<T extends PeerMessage["t"]> = Extract<PeerMessage, { t: T }>;

const bulkEnvelopes = {
  append: z.object({ t: z.literal("append"), epoch, prevIndex: index, prevEpoch: epoch, entries: z.array(z.unknown()), commitIndex: index }),
  fetch_reply: z.object({ t: z.literal("fetch_reply"), epoch, prevIndex: index, prevEpoch: epoch, entries: z.array(z.unknown()) }),
};

const isCount = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0;

/** The same rules as LogEntrySchema, without zod's per-object cost: appends carry thousands of entries. */
function isLogEntry(value: unknown): boolean {
  if (typeof value !== "object" || value === null) return false;
  const entry = value as Record<string, unknown>;
  const command = entry.command as Record<string, unknown> | null;
  return (
    isCount(entry.index) &&
    entry.index >= 1 &&
    isCount(entry.epoch) &&
    (entry.clientId === null || typeof entry.clientId === "string") &&
    (entry.requestId === null || (typeof entry.requestId === "number" && Number.isSafeInteger(entry.requestId))) &&
    typeof command === "object" &&
    command !== null &&
    typeof command.op === "string"
  );
}

/** Validates a peer message; bulk messages get a fast per-entry check. */
export function parsePeerMessage(raw: unknown): { success: true; data: PeerMessage } | { success: false; error: string } {
  const kind = typeof raw === "object" && raw !== null ? (raw as { t?: unknown }).t : undefined;
  if (kind === "append" || kind === "fetch_reply") {
    const envelope = bulkEnvelopes[kind].safeParse(raw);
    if (!envelope.success) return { success: false, error: envelope.error.issues[0]?.message ?? "bad envelope" };
    const bad = envelope.data.entries.findIndex((entry) => !isLogEntry(entry));
    if (bad !== -1) return { success: false, error: `entry ${bad} is not a log entry` };
    return { success: true, data: envelope.data as PeerMessage };
  }
  const parsed = PeerMessageSchema.safeParse(raw);
  return parsed.success ? { success: true, data: parsed.data } : { success: false, error: parsed.error.issues[0]?.message ?? "invalid" };
}

/** The entries in messages are LogEntry objects; zod's loose command type is narrowed here. */
export function entriesOf(message: { entries: unknown[] }): LogEntry[] {
  return message.entries as LogEntry[];
}
