// Business schema: the validation rules for accounts, messages and channels.
// The wire protocol (connections/schema.ts) builds its request schemas from these.
import { z } from "zod";
import {
  channelNameLengthMax,
  messageLengthMax,
  pageSizeMax,
  passwordLengthMax,
  passwordLengthMin,
  topicLengthMax,
  usernameLengthMax,
  usernameLengthMin,
} from "./connections/consts.js";

/** Letters, digits, '_', '-' and '.', starting with a letter or digit. Unique ignoring case. */
export const Username = z
  .string()
  .min(usernameLengthMin)
  .max(usernameLengthMax)
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, "letters, digits, '_', '-' or '.', starting with a letter or digit");

export const Password = z.string().min(passwordLengthMin).max(passwordLengthMax);

/** Lower-case letters, digits, '_' and '-', starting with a letter or digit; written with a leading '#' in conversations. */
export const ChannelName = z
  .string()
  .min(1)
  .max(channelNameLengthMax)
  .regex(/^[a-z0-9][a-z0-9_-]*$/, "lower-case letters, digits, '_' or '-', starting with a letter or digit");

export const MessageBody = z
  .string()
  .min(1)
  .max(messageLengthMax)
  .refine((body) => body.trim().length > 0, "message must not be blank");

export const Topic = z.string().max(topicLengthMax);

/** A conversation is "@username" (direct messages with that user) or "#channel". */
export const Conversation = z.string().regex(/^[@#].+$/, "\"@username\" or \"#channel\"");

/** Account listing pattern: '*' matches any run of characters, '?' exactly one. */
export const UserPattern = z.string().min(1).max(usernameLengthMax * 2).regex(/^[A-Za-z0-9_.\-*?]+$/, "username characters plus '*' and '?'");

export const PageLimit = z.number().int().min(1).max(pageSizeMax);
export const MessageId = z.number().int().min(1);

export type ConversationRef = { kind: "dm"; username: string } | { kind: "channel"; channel: string };

export function parseConversation(conversation: string): ConversationRef | undefined {
  const name = conversation.slice(1);
  if (conversation.startsWith("@") && Username.safeParse(name).success) return { kind: "dm", username: name };
  if (conversation.startsWith("#") && ChannelName.safeParse(name).success) return { kind: "channel", channel: name };
  return undefined;
}

/** Turns a '*'/'?' wildcard into an anchored, case-insensitive RegExp. */
export function wildcardToRegExp(pattern: string): RegExp {
  const escaped = pattern.replace(/[.+^${}()|[\]\\-]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`, "i");
}

/** Turns a '*'/'?' wildcard into a SQLite GLOB over lower-cased names. */
export function wildcardToGlob(pattern: string): string {
  return pattern.toLowerCase().replace(/[[\]]/g, "");
}
