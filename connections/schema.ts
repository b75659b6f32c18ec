// The client wire protocol: the single source of truth for every request, response and push event.
// Framing: one JSON object per line (UTF-8, '\n'-terminated), at most consts.frameBytesMax bytes per line.
// docs/protocol.md documents every message defined here.
import { z } from "zod";
import { pageSizeDefault, protocolVersion } from "./consts.js";
import {
  ChannelName,
  Conversation,
  MessageBody,
  MessageId,
  PageLimit,
  Password,
  Topic,
  UserPattern,
  Username,
} from "../schema.js";

/** Fields every request carries. `id` is chosen by the client and echoed in the response. */
const envelope = {
  v: z.literal(protocolVersion),
  id: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
};

function request<T extends string, S extends z.ZodRawShape>(type: T, shape: S) {
  return z.strictObject({ ...envelope, type: z.literal(type), ...shape });
}

export const HelloRequest = request("hello", {
  /** Stable id of this client instance; with `id`, the key that makes retried writes exactly-once. */
  clientId: z.string().min(8).max(64).regex(/^[A-Za-z0-9_-]+$/),
});
export const PingRequest = request("ping", {});
export const RegisterRequest = request("register", { username: Username, password: Password });
export const LoginRequest = request("login", { username: Username, password: Password });
export const AuthRequest = request("auth", { token: z.string().min(1).max(200) });
export const LogoutRequest = request("logout", {});
export const DeleteAccountRequest = request("delete_account", { password: Password });
export const ListUsersRequest = request("list_users", {
  pattern: UserPattern.default("*"),
  after: z.string().max(64).optional(),
  limit: PageLimit.default(pageSizeDefault),
});
export const SendDmRequest = request("send_dm", { to: Username, body: MessageBody });
export const ReadUndeliveredRequest = request("read_undelivered", { limit: PageLimit.default(pageSizeDefault) });
export const HistoryRequest = request("history", {
  conversation: Conversation,
  before: MessageId.optional(),
  after: z.number().int().min(0).optional(),
  limit: PageLimit.default(pageSizeDefault),
});
export const DeleteMessageRequest = request("delete_message", { messageId: MessageId });
export const CreateChannelRequest = request("create_channel", { channel: ChannelName, topic: Topic.default("") });
export const ListChannelsRequest = request("list_channels", {
  pattern: z.string().min(1).max(64).regex(/^[a-z0-9_\-*?]+$/).default("*"),
  after: z.string().max(64).optional(),
  limit: PageLimit.default(pageSizeDefault),
});
export const JoinChannelRequest = request("join_channel", { channel: ChannelName });
export const LeaveChannelRequest = request("leave_channel", { channel: ChannelName });
export const SetTopicRequest = request("set_topic", { channel: ChannelName, topic: Topic });
export const DeleteChannelRequest = request("delete_channel", { channel: ChannelName });
export const PostRequest = request("post", { channel: ChannelName, body: MessageBody });
export const MarkReadRequest = request("mark_read", { conversation: Conversation, messageId: MessageId });
export const UnreadRequest = request("unread", {});
export const EventsSinceRequest = request("events_since", {
  afterSeq: z.number().int().min(0),
  limit: PageLimit.default(pageSizeDefault),
});

export const Request = z.discriminatedUnion("type", [
  HelloRequest,
  PingRequest,
  RegisterRequest,
  LoginRequest,
  AuthRequest,
  LogoutRequest,
  DeleteAccountRequest,
  ListUsersRequest,
  SendDmRequest,
  ReadUndeliveredRequest,
  HistoryRequest,
  DeleteMessageRequest,
  CreateChannelRequest,
  ListChannelsRequest,
  JoinChannelRequest,
  LeaveChannelRequest,
  SetTopicRequest,
  DeleteChannelRequest,
  PostRequest,
  MarkReadRequest,
  UnreadRequest,
  EventsSinceRequest,
]);
export type Request = z.infer<typeof Request>;
export type RequestType = Request["type"];
export const requestTypes = Request.options.map((option) => option.shape.type.value) as RequestType[];

/** Requests that change replicated state: each becomes one log entry and is deduplicated by (clientId, id). */
export const writeRequestTypes = new Set<RequestType>([
  "register",
  "login",
  "logout",
  "delete_account",
  "send_dm",
  "read_undelivered",
  "delete_message",
  "create_channel",
  "join_channel",
  "leave_channel",
  "set_topic",
  "delete_channel",
  "post",
  "mark_read",
]);
/** Requests that need no session. Everything else answers CHAT_ERR_NOT_LOGGED_IN without one. */
export const anonymousRequestTypes = new Set<RequestType>(["hello", "ping", "register", "login", "auth"]);
/** Requests any server answers, primary or not. */
export const anyServerRequestTypes = new Set<RequestType>(["hello", "ping"]);

// ---- data shapes used in responses and events ------------------------------

export const MessageView = z.object({
  id: z.number().int(),
  conversation: z.string(),
  from: z.string(),
  /** For direct messages: the recipient's username. */
  to: z.string().optional(),
  body: z.string(),
  ts: z.number().int(),
});
export type MessageView = z.infer<typeof MessageView>;

export const UnreadSummary = z.object({
  conversations: z.array(z.object({ conversation: z.string(), unread: z.number().int(), lastMessageId: z.number().int() })),
  undelivered: z.number().int(),
});
export type UnreadSummary = z.infer<typeof UnreadSummary>;

export const ChannelView = z.object({
  name: z.string(),
  topic: z.string(),
  admin: z.string().nullable(),
  members: z.number().int(),
  joined: z.boolean(),
});
export type ChannelView = z.infer<typeof ChannelView>;

export const EventBody = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("message"), message: MessageView }),
  z.object({ kind: z.literal("message_deleted"), conversation: z.string(), messageId: z.number().int() }),
  z.object({ kind: z.literal("member_joined"), channel: z.string(), user: z.string() }),
  z.object({ kind: z.literal("member_left"), channel: z.string(), user: z.string() }),
  z.object({ kind: z.literal("topic_changed"), channel: z.string(), topic: z.string(), by: z.string() }),
  z.object({ kind: z.literal("channel_deleted"), channel: z.string(), by: z.string() }),
  z.object({ kind: z.literal("admin_changed"), channel: z.string(), admin: z.string().nullable() }),
]);
export type EventBody = z.infer<typeof EventBody>;

/** A push event. `seq` is the log index of the write that caused it; it only grows. */
export const ChatEvent = z.object({ seq: z.number().int(), event: EventBody });
export type ChatEvent = z.infer<typeof ChatEvent>;

// ---- server -> client frames ----------------------------------------------

export const OkResponse = z.object({
  v: z.literal(protocolVersion),
  type: z.literal("ok"),
  id: z.number().int(),
  data: z.record(z.string(), z.unknown()),
});
export const ErrorResponse = z.object({
  v: z.literal(protocolVersion),
  type: z.literal("error"),
  /** The request id, or 0 when the request could not be read far enough to find one. */
  id: z.number().int(),
  code: z.string(),
  message: z.string(),
  /** For CHAT_ERR_NOT_PRIMARY: the primary this server knows, if any. */
  primary: z.object({ id: z.number().int(), host: z.string(), clientPort: z.number().int() }).optional(),
  /** For CHAT_ERR_TOO_MANY_ATTEMPTS: milliseconds until the account's next password check is allowed. */
  retryAfterMs: z.number().int().nonnegative().optional(),
});
export const EventFrame = z.object({ v: z.literal(protocolVersion), type: z.literal("event"), seq: z.number().int(), event: EventBody });
export const ServerFrame = z.discriminatedUnion("type", [OkResponse, ErrorResponse, EventFrame]);
export type ServerFrame = z.infer<typeof ServerFrame>;
export type OkResponse = z.infer<typeof OkResponse>;
export type ErrorResponse = z.infer<typeof ErrorResponse>;
export type EventFrame = z.infer<typeof EventFrame>;

/** What `ping` and `hello` return: enough for a connector to find the primary. */
export const ServerStatus = z.object({
  serverId: z.number().int(),
  role: z.enum(["primary", "backup", "recovering"]),
  epoch: z.number().int(),
  primaryId: z.number().int().nullable(),
  commitIndex: z.number().int(),
  /** Last entry in this server's log. */
  lastIndex: z.number().int(),
  /** Last entry its state tables reflect: below lastIndex while a backup applies entries it logged in a catch-up. */
  appliedIndex: z.number().int(),
  /** The in-sync set of the newest config this server holds. */
  members: z.array(z.number().int()),
});
export type ServerStatus = z.infer<typeof ServerStatus>;
