// Read-only queries over the state tables. Reads never write, so they need no log entry.
import type Database from "better-sqlite3";
import type { ChannelView, ChatEvent, EventBody, MessageView, UnreadSummary } from "../connections/schema.js";
import { wildcardToGlob, type ConversationRef } from "../schema.js";
import { unreadCountMax } from "../connections/consts.js";
import { dmKey } from "./apply.js";

type Row = Record<string, any>;

/** SQLite reads a negative LIMIT as "no limit"; used only where the rows are bounded by the WHERE clause. */
const unlimitedRows = -1;

export type UserRecord = { id: number; name: string; salt: string; hash: string };

export class Queries {
  private readonly statements;

  constructor(db: Database.Database) {
    const s = (sql: string) => db.prepare(sql);
    this.statements = {
      userByKey: s("SELECT id, name, salt, hash FROM users WHERE name_key = ? AND deleted = 0"),
      userById: s("SELECT id, name, deleted FROM users WHERE id = ?"),
      // A DM partner: the live account of that name, else the newest deleted one (its history stays readable).
      dmPartnerByKey: s("SELECT id, name FROM users WHERE name_key = ? ORDER BY deleted, id DESC LIMIT 1"),
      session: s("SELECT s.user_id, u.name FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.session_id = ? AND u.deleted = 0"),
      listUsers: s("SELECT name, name_key FROM users WHERE deleted = 0 AND name_key GLOB ? AND name_key > ? ORDER BY name_key LIMIT ?"),
      channelByName: s("SELECT * FROM channels WHERE name = ?"),
      membership: s("SELECT 1 FROM memberships WHERE channel_id = ? AND user_id = ?"),
      listChannels: s(`
        SELECT c.name, c.topic, u.name AS admin,
               (SELECT count(*) FROM memberships m WHERE m.channel_id = c.id) AS members,
               EXISTS (SELECT 1 FROM memberships m WHERE m.channel_id = c.id AND m.user_id = ?) AS joined
        FROM channels c LEFT JOIN users u ON u.id = c.admin_id
        WHERE c.name GLOB ? AND c.name > ? ORDER BY c.name LIMIT ?`),
      channelHistoryBefore: s(
        "SELECT * FROM messages WHERE channel_id = ? AND id < ? AND deleted_seq IS NULL ORDER BY id DESC LIMIT ?",
      ),
      channelHistoryAfter: s("SELECT * FROM messages WHERE channel_id = ? AND id > ? AND id <= ? AND deleted_seq IS NULL ORDER BY id LIMIT ?"),
      dmHistoryBefore: s("SELECT * FROM messages WHERE dm_key = ? AND id < ? AND deleted_seq IS NULL ORDER BY id DESC LIMIT ?"),
      dmHistoryAfter: s("SELECT * FROM messages WHERE dm_key = ? AND id > ? AND id <= ? AND deleted_seq IS NULL ORDER BY id LIMIT ?"),
      userChannels: s("SELECT c.id, c.name FROM memberships m JOIN channels c ON c.id = m.channel_id WHERE m.user_id = ? ORDER BY c.name"),
      channelUnread: unreadStatements(db, "channel_id"),
      dmPartners: s("SELECT other_id AS other FROM dm_partners WHERE user_id = ? ORDER BY other_id"),
      dmUnread: unreadStatements(db, "dm_key"),
      marker: s("SELECT message_id FROM read_markers WHERE user_id = ? AND conv_key = ?"),
      undeliveredCount: s("SELECT count(*) AS n FROM messages WHERE recipient_id = ? AND delivered = 0 AND deleted_seq IS NULL"),
      eventsDm: s(`
        SELECT * FROM messages WHERE dm_key IS NOT NULL AND (sender_id = ? OR recipient_id = ?) AND id > ? AND id <= ?
          AND deleted_seq IS NULL
        ORDER BY id LIMIT ?`),
      eventsChannel: s(`
        SELECT m.* FROM messages m JOIN memberships mm ON mm.channel_id = m.channel_id AND mm.user_id = ?
        WHERE m.id > ? AND m.id <= ? AND m.id > mm.joined_seq AND m.deleted_seq IS NULL ORDER BY m.id LIMIT ?`),
      eventsDeleted: s(`
        SELECT m.* FROM messages m LEFT JOIN memberships mm ON mm.channel_id = m.channel_id AND mm.user_id = ?
        WHERE m.deleted_seq > ? AND m.deleted_seq <= ?
          AND ((m.dm_key IS NOT NULL AND (m.sender_id = ? OR m.recipient_id = ?)) OR mm.user_id IS NOT NULL)
        ORDER BY m.deleted_seq LIMIT ?`),
      eventsNotices: s("SELECT seq, body FROM notices WHERE user_id = ? AND seq > ? AND seq <= ? ORDER BY seq, ord LIMIT ?"),
      channelName: s("SELECT name FROM channels WHERE id = ?"),
    };
  }

  userByName(username: string): UserRecord | undefined {
    return this.statements.userByKey.get(username.toLowerCase()) as UserRecord | undefined;
  }

  userName(id: number): string | undefined {
    return (this.statements.userById.get(id) as Row | undefined)?.name;
  }

  session(sessionId: string): { userId: number; username: string } | undefined {
    const row = this.statements.session.get(sessionId) as Row | undefined;
    return row ? { userId: row.user_id, username: row.name } : undefined;
  }

  listUsers(pattern: string, after: string | undefined, limit: number): { names: string[]; next: string | null } {
    const rows = this.statements.listUsers.all(wildcardToGlob(pattern), (after ?? "").toLowerCase(), limit + 1) as Row[];
    const page = rows.slice(0, limit);
    return { names: page.map((row) => row.name), next: rows.length > limit ? page[page.length - 1].name : null };
  }

  listChannels(viewer: number, pattern: string, after: string | undefined, limit: number): { channels: ChannelView[]; next: string | null } {
    const rows = this.statements.listChannels.all(viewer, pattern, after ?? "", limit + 1) as Row[];
    const page = rows.slice(0, limit).map((row) => ({
      name: row.name,
      topic: row.topic,
      admin: row.admin ?? null,
      members: row.members,
      joined: row.joined === 1,
    }));
    return { channels: page, next: rows.length > limit ? page[page.length - 1].name : null };
  }

  /** Messages of a conversation, oldest first. Returns an error code when the viewer may not read it. */
  history(
    viewer: number,
    ref: ConversationRef,
    cursor: { before?: number; after?: number },
    limit: number,
    /**
     * The commit index: messages after it are applied on this primary but not yet on every in-sync
     * server, and could still be dropped with it, so a history shows none of them (a message's id is
     * its log index).
     */
    upTo: number,
  ): { messages: MessageView[] } | { error: "UNKNOWN_CHANNEL" | "NOT_MEMBER" | "UNKNOWN_USER" } {
    let rows: Row[];
    const before = Math.min(cursor.before ?? Number.MAX_SAFE_INTEGER, upTo + 1);
    let conversation: string;
    if (ref.kind === "channel") {
      const channel = this.statements.channelByName.get(ref.channel) as Row | undefined;
      if (!channel) return { error: "UNKNOWN_CHANNEL" };
      if (!this.statements.membership.get(channel.id, viewer)) return { error: "NOT_MEMBER" };
      conversation = `#${channel.name}`;
      rows =
        cursor.after !== undefined
          ? (this.statements.channelHistoryAfter.all(channel.id, cursor.after, upTo, limit) as Row[])
          : (this.statements.channelHistoryBefore.all(channel.id, before, limit) as Row[]).reverse();
    } else {
      const other = this.statements.dmPartnerByKey.get(ref.username.toLowerCase()) as Row | undefined;
      if (!other) return { error: "UNKNOWN_USER" };
      conversation = `@${other.name}`;
      const key = dmKey(viewer, other.id);
      rows =
        cursor.after !== undefined
          ? (this.statements.dmHistoryAfter.all(key, cursor.after, upTo, limit) as Row[])
          : (this.statements.dmHistoryBefore.all(key, before, limit) as Row[]).reverse();
    }
    return { messages: rows.map((row) => this.messageView(row, conversation)) };
  }

  unread(userId: number): UnreadSummary {
    const conversations: UnreadSummary["conversations"] = [];
    for (const channel of this.statements.userChannels.all(userId) as Row[]) {
      const marker = (this.statements.marker.get(userId, `c:${channel.id}`) as Row | undefined)?.message_id ?? 0;
      conversations.push({ conversation: `#${channel.name}`, ...countUnread(this.statements.channelUnread, channel.id, marker, userId) });
    }
    for (const partner of this.statements.dmPartners.all(userId) as Row[]) {
      const name = this.userName(partner.other);
      if (name === undefined) continue;
      const marker = (this.statements.marker.get(userId, `d:${partner.other}`) as Row | undefined)?.message_id ?? 0;
      conversations.push({ conversation: `@${name}`, ...countUnread(this.statements.dmUnread, dmKey(userId, partner.other), marker, userId) });
    }
    const undelivered = (this.statements.undeliveredCount.get(userId) as Row).n as number;
    return { conversations, undelivered };
  }

  /**
   * Every event for `userId` with afterSeq < seq <= upToSeq, oldest first, at most `limit`.
   * `upToSeq` is the commit index: events of uncommitted entries are never shown.
   */
  eventsSince(userId: number, afterSeq: number, upToSeq: number, limit: number): { events: ChatEvent[]; more: boolean } {
    const first = this.collectEvents(userId, afterSeq, upToSeq, limit + 1);
    if (first.length <= limit) return { events: first, more: false };
    // Several events may share a seq (delete_account leaves every channel at one seq); a page never
    // splits a seq, so it holds every event up to and including the seq of its limit-th event.
    // Bounded: fewer than `limit` events precede that seq, and one entry makes few events per user.
    const lastSeq = first[limit - 1].seq;
    const events = this.collectEvents(userId, afterSeq, lastSeq, unlimitedRows);
    const more = this.collectEvents(userId, lastSeq, upToSeq, 1).length > 0;
    return { events, more };
  }

  /** The first `fetch` events of each kind with afterSeq < seq <= upToSeq, merged in seq order. */
  private collectEvents(userId: number, afterSeq: number, upToSeq: number, fetch: number): ChatEvent[] {
    const events: ChatEvent[] = [];
    for (const row of this.statements.eventsDm.all(userId, userId, afterSeq, upToSeq, fetch) as Row[]) {
      const other = row.sender_id === userId ? row.recipient_id : row.sender_id;
      events.push({ seq: row.id, event: { kind: "message", message: this.messageView(row, `@${this.userName(other)}`) } });
    }
    for (const row of this.statements.eventsChannel.all(userId, afterSeq, upToSeq, fetch) as Row[]) {
      const name = (this.statements.channelName.get(row.channel_id) as Row).name;
      events.push({ seq: row.id, event: { kind: "message", message: this.messageView(row, `#${name}`) } });
    }
    for (const row of this.statements.eventsDeleted.all(userId, afterSeq, upToSeq, userId, userId, fetch) as Row[]) {
      const conversation =
        row.channel_id !== null
          ? `#${(this.statements.channelName.get(row.channel_id) as Row).name}`
          : `@${this.userName(row.sender_id === userId ? row.recipient_id : row.sender_id)}`;
      events.push({ seq: row.deleted_seq, event: { kind: "message_deleted", conversation, messageId: row.id } });
    }
    for (const row of this.statements.eventsNotices.all(userId, afterSeq, upToSeq, fetch) as Row[]) {
      events.push({ seq: row.seq, event: JSON.parse(row.body) as EventBody });
    }
    // Stable: within one seq, events keep the order of the kinds above.
    return events.sort((a, b) => a.seq - b.seq);
  }

  /** A deleted message in a history page shows as nothing (filtered in SQL); a live one as a view. */
  private messageView(row: Row, conversation: string): MessageView {
    const from = this.userName(row.sender_id) ?? "?";
    const view: MessageView = { id: row.id, conversation, from, body: row.body, ts: row.ts };
    if (row.recipient_id !== null) view.to = this.userName(row.recipient_id) ?? "?";
    return view;
  }
}

/**
 * Unread messages of one conversation (keyed by `column`): a count capped at unreadCountMax and the
 * newest unread id, each read off the conversation's index without visiting more than the cap.
 */
function unreadStatements(db: Database.Database, column: "channel_id" | "dm_key") {
  const unread = `${column} = ? AND id > ? AND sender_id != ? AND deleted_seq IS NULL`;
  return {
    count: db.prepare(`SELECT count(*) AS unread FROM (SELECT 1 FROM messages WHERE ${unread} LIMIT ?)`),
    newest: db.prepare(`SELECT id FROM messages WHERE ${unread} ORDER BY id DESC LIMIT 1`),
  };
}

function countUnread(statements: ReturnType<typeof unreadStatements>, key: number | string, marker: number, userId: number): { unread: number; lastMessageId: number } {
  const unread = (statements.count.get(key, marker, userId, unreadCountMax) as Row).unread as number;
  const lastMessageId = unread === 0 ? 0 : ((statements.newest.get(key, marker, userId) as Row).id as number);
  return { unread, lastMessageId };
}
