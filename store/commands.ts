// Log entries and the commands they carry.
// A command holds every value the primary chose (ids come from the log index, timestamps, hashes,
// session ids, whether a DM was pushed at send time), so applying it needs no clock and no randomness.
import type { EventBody } from "../connections/schema.js";

export type ConfigCommand = {
  op: "config";
  /** The server that acknowledges writes in this epoch. */
  primary: number;
  /** The in-sync set: every member durably holds every acknowledged entry. Includes the primary. */
  members: number[];
};

export type Command =
  | ConfigCommand
  | { op: "bootstrap"; channels: string[] }
  | { op: "register"; username: string; salt: string; hash: string; sessionId: string; ts: number }
  | { op: "login"; userId: number; sessionId: string; ts: number }
  | { op: "logout"; actor: number; sessionId: string }
  | { op: "delete_account"; actor: number; ts: number }
  | { op: "send_dm"; actor: number; to: string; body: string; ts: number; delivered: boolean }
  | { op: "read_undelivered"; actor: number; limit: number }
  | { op: "delete_message"; actor: number; messageId: number }
  | { op: "create_channel"; actor: number; channel: string; topic: string; ts: number }
  | { op: "join_channel"; actor: number; channel: string }
  | { op: "leave_channel"; actor: number; channel: string }
  | { op: "set_topic"; actor: number; channel: string; topic: string }
  | { op: "delete_channel"; actor: number; channel: string }
  | { op: "post"; actor: number; channel: string; body: string; ts: number }
  | { op: "mark_read"; actor: number; conversation: string; messageId: number };

export type CommandOp = Command["op"];

export type LogEntry = {
  index: number;
  epoch: number;
  /** Who asked, for exactly-once retries; null for entries the cluster made itself (config, bootstrap). */
  clientId: string | null;
  requestId: number | null;
  command: Command;
};

/** Who a push event goes to: listed users, or every member of a channel at apply time. */
export type Audience = { users: number[] } | { channelId: number };
export type Effect = { audience: Audience; event: EventBody };

export type ApplyOk = { ok: true; data: Record<string, unknown>; effects: Effect[] };
export type ApplyError = { ok: false; code: string; message: string };
export type ApplyResult = ApplyOk | ApplyError;

/** A retry must ask the same thing as its first attempt: the same operation, for the same user. Other fields are not compared. */
export function sameRequest(first: Command, retry: Command): boolean {
  return first.op === retry.op && actorOf(first) === actorOf(retry);
}

/** The user a command acts for, or null (register). A retried request must act for the same user. */
export function actorOf(command: Command): number | null {
  if ("actor" in command) return command.actor;
  if (command.op === "login") return command.userId;
  return null;
}
