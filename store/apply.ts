// The deterministic state machine: applies one command at one log index to the state tables.
// No clock reads, no randomness, no iteration over unordered data: every server that applies the
// same entries ends with byte-identical tables. Errors are returned, not thrown, and the caller
// rolls the command back, so a failed command never reaches the log.
import type Database from "better-sqlite3";
import { undeliveredPageCharsMax } from "../connections/consts.js";
import { errorCodes } from "../connections/errors.js";
import type { EventBody, MessageView } from "../connections/schema.js";
import { parseConversation } from "../schema.js";
import type { ApplyResult, Command, Effect } from "./commands.js";

type Row = Record<string, any>;

const fail = (code: string, message: string): ApplyResult => ({ ok: false, code, message });
const ok = (data: Record<string, unknown>, effects: Effect[] = []): ApplyResult => ({ ok: true, data, effects });

export function dmKey(a: number, b: number): string {
  return a < b ? `${a}:${b}` : `${b}:${a}`;
}

export class StateMachine {
  private readonly statements;
  /** Orders the notices one entry creates, so pushes and events_since list them alike. */
  private noticeOrdinal = 0;

  constructor(private readonly db: Database.Database) {
    const s = (sql: string) => db.prepare(sql);
    this.statements = {
      // Only what apply uses: salt and hash would be copied into JavaScript on every post and DM.
      userByKey: s("SELECT id, name FROM users WHERE name_key = ? AND deleted = 0"),
      liveUserById: s("SELECT id, name FROM users WHERE id = ? AND deleted = 0"),
      channelName: s("SELECT name FROM channels WHERE id = ?"),
      userById: s("SELECT * FROM users WHERE id = ?"),
      // A DM partner: the live account of that name, else the newest deleted one (so its DMs can still be marked read).
      dmPartnerByKey: s("SELECT * FROM users WHERE name_key = ? ORDER BY deleted, id DESC LIMIT 1"),
      insertUser: s("INSERT INTO users (id, name, name_key, salt, hash, created_ts) VALUES (?, ?, ?, ?, ?, ?)"),
      markUserDeleted: s("UPDATE users SET deleted = 1, salt = '', hash = '' WHERE id = ?"),
      insertSession: s("INSERT INTO sessions (session_id, user_id, created_ts) VALUES (?, ?, ?)"),
      deleteSession: s("DELETE FROM sessions WHERE session_id = ? AND user_id = ?"),
      deleteUserSessions: s("DELETE FROM sessions WHERE user_id = ?"),
      channelByName: s("SELECT * FROM channels WHERE name = ?"),
      insertChannel: s("INSERT INTO channels (id, name, topic, admin_id, is_default, created_ts) VALUES (?, ?, ?, ?, ?, ?)"),
      setTopic: s("UPDATE channels SET topic = ? WHERE id = ?"),
      setAdmin: s("UPDATE channels SET admin_id = ? WHERE id = ?"),
      deleteChannel: s("DELETE FROM channels WHERE id = ?"),
      defaultChannels: s("SELECT id, name FROM channels WHERE is_default = 1 ORDER BY id DESC"),
      membership: s("SELECT 1 FROM memberships WHERE channel_id = ? AND user_id = ?"),
      insertMembership: s("INSERT INTO memberships (channel_id, user_id, joined_seq) VALUES (?, ?, ?)"),
      deleteMembership: s("DELETE FROM memberships WHERE channel_id = ? AND user_id = ?"),
      channelMembers: s("SELECT user_id FROM memberships WHERE channel_id = ? ORDER BY user_id"),
      oldestMember: s("SELECT user_id FROM memberships WHERE channel_id = ? ORDER BY joined_seq, user_id LIMIT 1"),
      userChannels: s("SELECT c.* FROM memberships m JOIN channels c ON c.id = m.channel_id WHERE m.user_id = ? ORDER BY c.id"),
      deleteChannelMemberships: s("DELETE FROM memberships WHERE channel_id = ?"),
      deleteChannelMessages: s("DELETE FROM messages WHERE channel_id = ?"),
      deleteChannelMarkers: s("DELETE FROM read_markers WHERE conv_key = ?"),
      insertMessage: s(
        "INSERT INTO messages (id, channel_id, dm_key, sender_id, recipient_id, body, ts, delivered) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      messageById: s("SELECT * FROM messages WHERE id = ?"),
      markMessageDeleted: s("UPDATE messages SET deleted_seq = ?, body = '' WHERE id = ?"),
      undelivered: s("SELECT * FROM messages WHERE recipient_id = ? AND delivered = 0 AND deleted_seq IS NULL ORDER BY id LIMIT ?"),
      undeliveredCount: s("SELECT count(*) AS n FROM messages WHERE recipient_id = ? AND delivered = 0 AND deleted_seq IS NULL"),
      markDelivered: s("UPDATE messages SET delivered = 1 WHERE id = ?"),
      deleteUndeliveredTo: s("DELETE FROM messages WHERE recipient_id = ? AND delivered = 0"),
      undeliveredSenders: s("SELECT DISTINCT sender_id FROM messages WHERE recipient_id = ? AND delivered = 0"),
      anyDm: s("SELECT 1 FROM messages WHERE dm_key = ? LIMIT 1"),
      // Both directions in one statement; for a DM to yourself the second row is the first again.
      insertPartners: s("INSERT OR IGNORE INTO dm_partners (user_id, other_id) VALUES (?, ?), (?, ?)"),
      deletePartners: s("DELETE FROM dm_partners WHERE (user_id = ? AND other_id = ?) OR (user_id = ? AND other_id = ?)"),
      marker: s("SELECT message_id FROM read_markers WHERE user_id = ? AND conv_key = ?"),
      upsertMarker: s(
        "INSERT INTO read_markers (user_id, conv_key, message_id) VALUES (?, ?, ?) ON CONFLICT (user_id, conv_key) DO UPDATE SET message_id = excluded.message_id",
      ),
      deleteUserMarkers: s("DELETE FROM read_markers WHERE user_id = ?"),
      insertNotice: s("INSERT INTO notices (user_id, seq, ord, body) VALUES (?, ?, ?, ?)"),
      messageInConversation: s("SELECT 1 FROM messages WHERE id = ? AND (channel_id = ? OR dm_key = ?)"),
    };
  }

  /** Applies `command` as the entry at log index `index`. */
  apply(index: number, command: Command): ApplyResult {
    this.noticeOrdinal = 0;
    switch (command.op) {
      case "config":
        return ok({ epochPrimary: command.primary });
      case "bootstrap":
        return this.applyBootstrap(command.channels);
      case "register":
        return this.applyRegister(index, command);
      case "login":
        return this.applyLogin(command);
      case "logout":
        this.statements.deleteSession.run(command.sessionId, command.actor);
        return ok({});
      case "delete_account":
        return this.applyDeleteAccount(index, command.actor);
      case "send_dm":
        return this.applySendDm(index, command);
      case "read_undelivered":
        return this.applyReadUndelivered(command.actor, command.limit);
      case "delete_message":
        return this.applyDeleteMessage(index, command.actor, command.messageId);
      case "create_channel":
        return this.applyCreateChannel(index, command);
      case "join_channel":
        return this.applyJoin(index, command.actor, command.channel);
      case "leave_channel":
        return this.applyLeave(index, command.actor, command.channel);
      case "set_topic":
        return this.applySetTopic(index, command.actor, command.channel, command.topic);
      case "delete_channel":
        return this.applyDeleteChannel(index, command.actor, command.channel);
      case "post":
        return this.applyPost(index, command);
      case "mark_read":
        return this.applyMarkRead(command.actor, command.conversation, command.messageId);
    }
  }

  // ---- accounts -------------------------------------------------------------

  private applyBootstrap(channels: string[]): ApplyResult {
    for (const [offset, name] of channels.entries()) {
      if (this.statements.channelByName.get(name)) continue;
      // Default channels get negative ids, so they never collide with ids taken from log indexes.
      this.statements.insertChannel.run(-(offset + 1), name, "", null, 1, 0);
    }
    return ok({});
  }

  private applyRegister(index: number, command: Extract<Command, { op: "register" }>): ApplyResult {
    const key = command.username.toLowerCase();
    if (this.statements.userByKey.get(key)) return fail(errorCodes.NAME_TAKEN, `username ${command.username} is taken`);
    this.statements.insertUser.run(index, command.username, key, command.salt, command.hash, command.ts);
    this.statements.insertSession.run(command.sessionId, index, command.ts);
    const joined: string[] = [];
    for (const channel of this.statements.defaultChannels.all() as Row[]) {
      this.statements.insertMembership.run(channel.id, index, index);
      joined.push(channel.name as string);
    }
    return ok({ username: command.username, sessionId: command.sessionId, channels: joined });
  }

  private applyLogin(command: Extract<Command, { op: "login" }>): ApplyResult {
    const user = this.liveUser(command.userId);
    if (!user) return fail(errorCodes.BAD_CREDENTIALS, "wrong username or password");
    this.statements.insertSession.run(command.sessionId, user.id, command.ts);
    return ok({ username: user.name, sessionId: command.sessionId });
  }

  private applyDeleteAccount(index: number, actor: number): ApplyResult {
    const user = this.liveUser(actor);
    if (!user) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const effects: Effect[] = [];
    for (const channel of this.statements.userChannels.all(actor) as Row[]) {
      effects.push(...this.removeMember(index, channel, actor));
    }
    this.statements.deleteUserSessions.run(actor);
    // Undelivered DMs to a deleted account go; a sender left with no message to or from it loses the conversation.
    const senders = (this.statements.undeliveredSenders.all(actor) as Row[]).map((row) => row.sender_id as number);
    this.statements.deleteUndeliveredTo.run(actor);
    for (const sender of senders) {
      if (!this.statements.anyDm.get(dmKey(sender, actor))) this.statements.deletePartners.run(sender, actor, actor, sender);
    }
    this.statements.deleteUserMarkers.run(actor);
    this.statements.markUserDeleted.run(actor);
    return ok({ username: user.name }, effects);
  }

  // ---- direct messages -------------------------------------------------------

  private applySendDm(index: number, command: Extract<Command, { op: "send_dm" }>): ApplyResult {
    const sender = this.liveUser(command.actor);
    if (!sender) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const recipient = this.statements.userByKey.get(command.to.toLowerCase()) as Row | undefined;
    if (!recipient) return fail(errorCodes.UNKNOWN_USER, `no user named ${command.to}`);
    const key = dmKey(sender.id, recipient.id);
    // A DM to yourself is "delivered" by definition: you wrote it.
    const delivered = command.delivered || sender.id === recipient.id ? 1 : 0;
    this.statements.insertMessage.run(index, null, key, sender.id, recipient.id, command.body, command.ts, delivered);
    this.statements.insertPartners.run(sender.id, recipient.id, recipient.id, sender.id);
    const message: MessageView = { id: index, conversation: `@${recipient.name}`, from: sender.name, to: recipient.name, body: command.body, ts: command.ts };
    // Each side sees the conversation named after the other side, as in history and events_since.
    const effects: Effect[] = [{ audience: { users: [sender.id] }, event: { kind: "message", message } }];
    if (recipient.id !== sender.id) {
      effects.push({ audience: { users: [recipient.id] }, event: { kind: "message", message: { ...message, conversation: `@${sender.name}` } } });
    }
    return ok({ message }, effects);
  }

  private applyReadUndelivered(actor: number, limit: number): ApplyResult {
    if (!this.liveUser(actor)) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    // Bounded in characters as well as in count (consts.ts undeliveredPageCharsMax).
    const rows: Row[] = [];
    let chars = 0;
    for (const row of this.statements.undelivered.iterate(actor, limit) as IterableIterator<Row>) {
      chars += (row.body as string).length;
      if (rows.length > 0 && chars > undeliveredPageCharsMax) break;
      rows.push(row);
    }
    const messages = rows.map((row) => this.dmView(row, actor));
    for (const row of rows) this.statements.markDelivered.run(row.id);
    const remaining = (this.statements.undeliveredCount.get(actor) as Row).n as number;
    return ok({ messages, remaining });
  }

  private applyDeleteMessage(index: number, actor: number, messageId: number): ApplyResult {
    if (!this.liveUser(actor)) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const row = this.statements.messageById.get(messageId) as Row | undefined;
    if (!row || row.deleted_seq !== null) return fail(errorCodes.UNKNOWN_MESSAGE, `no message ${messageId}`);
    if (row.sender_id !== actor) return fail(errorCodes.FORBIDDEN, "you can delete only your own messages");
    this.statements.markMessageDeleted.run(index, messageId);
    const deleted = (conversation: string): EventBody => ({ kind: "message_deleted", conversation, messageId });
    if (row.channel_id !== null) {
      return ok({ messageId }, [{ audience: { channelId: row.channel_id }, event: deleted(`#${this.channelName(row.channel_id)}`) }]);
    }
    // Each side sees the conversation named after the other side, as in history and events_since.
    const sender = this.statements.userById.get(row.sender_id) as Row;
    const recipient = this.statements.userById.get(row.recipient_id) as Row;
    const effects: Effect[] = [{ audience: { users: [sender.id] }, event: deleted(`@${recipient.name}`) }];
    if (recipient.id !== sender.id) effects.push({ audience: { users: [recipient.id] }, event: deleted(`@${sender.name}`) });
    return ok({ messageId }, effects);
  }

  // ---- channels --------------------------------------------------------------

  private applyCreateChannel(index: number, command: Extract<Command, { op: "create_channel" }>): ApplyResult {
    if (!this.liveUser(command.actor)) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    if (this.statements.channelByName.get(command.channel)) return fail(errorCodes.CHANNEL_EXISTS, `#${command.channel} already exists`);
    this.statements.insertChannel.run(index, command.channel, command.topic, command.actor, 0, command.ts);
    this.statements.insertMembership.run(index, command.actor, index);
    return ok({ channel: command.channel, topic: command.topic });
  }

  private applyJoin(index: number, actor: number, name: string): ApplyResult {
    const user = this.liveUser(actor);
    if (!user) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const channel = this.statements.channelByName.get(name) as Row | undefined;
    if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${name}`);
    if (this.statements.membership.get(channel.id, actor)) return fail(errorCodes.ALREADY_MEMBER, `already in #${name}`);
    this.statements.insertMembership.run(channel.id, actor, index);
    const effects = this.notifyMembers(index, channel.id, { kind: "member_joined", channel: name, user: user.name });
    return ok({ channel: name, topic: channel.topic }, effects);
  }

  private applyLeave(index: number, actor: number, name: string): ApplyResult {
    if (!this.liveUser(actor)) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const channel = this.statements.channelByName.get(name) as Row | undefined;
    if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${name}`);
    if (!this.statements.membership.get(channel.id, actor)) return fail(errorCodes.NOT_MEMBER, `not in #${name}`);
    return ok({ channel: name }, this.removeMember(index, channel, actor));
  }

  private applySetTopic(index: number, actor: number, name: string, topic: string): ApplyResult {
    const user = this.liveUser(actor);
    if (!user) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const channel = this.statements.channelByName.get(name) as Row | undefined;
    if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${name}`);
    if (channel.admin_id !== actor) return fail(errorCodes.FORBIDDEN, `only the admin of #${name} can set its topic`);
    this.statements.setTopic.run(topic, channel.id);
    // Stored as a notice like the other channel events, so events_since replays it after a reconnect.
    const effects = this.notifyMembers(index, channel.id, { kind: "topic_changed", channel: name, topic, by: user.name });
    return ok({ channel: name, topic }, effects);
  }

  private applyDeleteChannel(index: number, actor: number, name: string): ApplyResult {
    const user = this.liveUser(actor);
    if (!user) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const channel = this.statements.channelByName.get(name) as Row | undefined;
    if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${name}`);
    if (channel.admin_id !== actor) return fail(errorCodes.FORBIDDEN, `only the admin of #${name} can delete it`);
    const effects = this.notifyMembers(index, channel.id, { kind: "channel_deleted", channel: name, by: user.name });
    this.dropChannel(channel.id);
    return ok({ channel: name }, effects);
  }

  private applyPost(index: number, command: Extract<Command, { op: "post" }>): ApplyResult {
    const sender = this.liveUser(command.actor);
    if (!sender) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const channel = this.statements.channelByName.get(command.channel) as Row | undefined;
    if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${command.channel}`);
    if (!this.statements.membership.get(channel.id, command.actor)) return fail(errorCodes.NOT_MEMBER, `join #${command.channel} to post in it`);
    this.statements.insertMessage.run(index, channel.id, null, sender.id, null, command.body, command.ts, 1);
    const message: MessageView = { id: index, conversation: `#${command.channel}`, from: sender.name, body: command.body, ts: command.ts };
    return ok({ message }, [{ audience: { channelId: channel.id }, event: { kind: "message", message } }]);
  }

  private applyMarkRead(actor: number, conversation: string, messageId: number): ApplyResult {
    if (!this.liveUser(actor)) return fail(errorCodes.BAD_SESSION, "account no longer exists");
    const key = this.conversationKey(actor, conversation);
    if (typeof key !== "string") return key;
    const channelId = key.startsWith("c:") ? Number(key.slice(2)) : null;
    const pair = key.startsWith("d:") ? dmKey(actor, Number(key.slice(2))) : null;
    if (!this.statements.messageInConversation.get(messageId, channelId, pair)) {
      return fail(errorCodes.UNKNOWN_MESSAGE, `no message ${messageId} in ${conversation}`);
    }
    const current = this.statements.marker.get(actor, key) as Row | undefined;
    // Markers only move forward, so two sessions marking in any order agree.
    const next = Math.max(current?.message_id ?? 0, messageId);
    this.statements.upsertMarker.run(actor, key, next);
    return ok({ conversation, messageId: next });
  }

  // ---- helpers ---------------------------------------------------------------

  /** The read-marker key of a conversation for `actor`, or an error if it does not exist for them. */
  conversationKey(actor: number, conversation: string): string | ApplyResult {
    const ref = parseConversation(conversation);
    if (!ref) return fail(errorCodes.BAD_REQUEST, `bad conversation ${conversation}`);
    if (ref.kind === "channel") {
      const channel = this.statements.channelByName.get(ref.channel) as Row | undefined;
      if (!channel) return fail(errorCodes.UNKNOWN_CHANNEL, `no channel #${ref.channel}`);
      if (!this.statements.membership.get(channel.id, actor)) return fail(errorCodes.NOT_MEMBER, `not in #${ref.channel}`);
      return `c:${channel.id}`;
    }
    const other = this.statements.dmPartnerByKey.get(ref.username.toLowerCase()) as Row | undefined;
    if (!other) return fail(errorCodes.UNKNOWN_USER, `no user named ${ref.username}`);
    return `d:${other.id}`;
  }

  private liveUser(id: number): Row | undefined {
    return this.statements.liveUserById.get(id) as Row | undefined;
  }

  private channelName(id: number): string {
    return (this.statements.channelName.get(id) as Row).name;
  }

  private dmView(row: Row, viewer: number): MessageView {
    const sender = this.statements.userById.get(row.sender_id) as Row;
    const recipient = this.statements.userById.get(row.recipient_id) as Row;
    const other = viewer === sender.id ? recipient : sender;
    return { id: row.id, conversation: `@${other.name}`, from: sender.name, to: recipient.name, body: row.body, ts: row.ts };
  }

  /** Stores a notice for every current member (so it survives reconnects) and pushes it to them. */
  private notifyMembers(index: number, channelId: number, event: EventBody): Effect[] {
    const members = (this.statements.channelMembers.all(channelId) as Row[]).map((row) => row.user_id as number);
    const body = JSON.stringify(event);
    this.noticeOrdinal += 1;
    for (const member of members) this.statements.insertNotice.run(member, index, this.noticeOrdinal, body);
    return members.length > 0 ? [{ audience: { users: members }, event }] : [];
  }

  /** Removes a member; an admin's role passes to the longest-standing member, and an empty user channel is deleted. */
  private removeMember(index: number, channel: Row, userId: number): Effect[] {
    const user = this.statements.userById.get(userId) as Row;
    const effects = this.notifyMembers(index, channel.id, { kind: "member_left", channel: channel.name, user: user.name });
    this.statements.deleteMembership.run(channel.id, userId);
    this.db.prepare("DELETE FROM read_markers WHERE user_id = ? AND conv_key = ?").run(userId, `c:${channel.id}`);
    if (channel.admin_id !== userId) return effects;
    const successor = this.statements.oldestMember.get(channel.id) as Row | undefined;
    if (!successor) {
      this.dropChannel(channel.id);
      return effects;
    }
    this.statements.setAdmin.run(successor.user_id, channel.id);
    const admin = (this.statements.userById.get(successor.user_id) as Row).name;
    effects.push(...this.notifyMembers(index, channel.id, { kind: "admin_changed", channel: channel.name, admin }));
    return effects;
  }

  private dropChannel(channelId: number): void {
    this.statements.deleteChannelMemberships.run(channelId);
    this.statements.deleteChannelMessages.run(channelId);
    this.statements.deleteChannelMarkers.run(`c:${channelId}`);
    this.statements.deleteChannel.run(channelId);
  }
}
