// Checks a fault run's history against the final state of every server. Violations are reported
// by class, because they mean different things: lost / duplicated / phantom are correctness,
// reordered is a consistency failure, diverged is replication, stuck is liveness.
import { logDigestOf } from "../../store/store.js";
import { openReadOnly } from "../helpers/cluster.js";
import type { History } from "./history.js";

export type ViolationClass = "lost" | "duplicated" | "phantom" | "reordered" | "push-lost" | "push-duplicated" | "diverged" | "stuck";
export type Violation = { class: ViolationClass; detail: string };

export type ServerState = { id: number; lastIndex: number; logDigest: string; messages: Map<string, { id: number; count: number; conversation: string }> };

export function readServerState(id: number, dbPath: string): ServerState {
  const db = openReadOnly(dbPath);
  try {
    const lastIndex = (db.prepare("SELECT coalesce(max(idx), 0) AS n FROM log").get() as { n: number }).n;
    const messages = new Map<string, { id: number; count: number; conversation: string }>();
    const rows = db
      .prepare(
        `SELECT m.id, m.body, c.name AS channel, s.name AS sender, r.name AS recipient FROM messages m
         LEFT JOIN channels c ON c.id = m.channel_id LEFT JOIN users s ON s.id = m.sender_id LEFT JOIN users r ON r.id = m.recipient_id
         WHERE m.deleted_seq IS NULL ORDER BY m.id`,
      )
      .all() as { id: number; body: string; channel: string | null; sender: string; recipient: string | null }[];
    for (const row of rows) {
      const conversation = row.channel ? `#${row.channel}` : `dm:${[row.sender, row.recipient].sort().join(",")}`;
      const existing = messages.get(row.body);
      if (existing) existing.count += 1;
      else messages.set(row.body, { id: row.id, count: 1, conversation });
    }
    return { id, lastIndex, logDigest: logDigestOf(db, lastIndex), messages };
  } finally {
    db.close();
  }
}

export type CheckOptions = { stuckAfterMs: number; usernames: Map<number, string> };

export function check(history: History, servers: ServerState[], options: CheckOptions): Violation[] {
  const violations: Violation[] = [];
  const add = (kind: ViolationClass, detail: string) => violations.push({ class: kind, detail });
  const reference = servers[0];

  for (const server of servers) {
    if (server.logDigest !== reference.logDigest || server.lastIndex !== reference.lastIndex) {
      add("diverged", `server ${server.id} log (${server.lastIndex} entries) differs from server ${reference.id} (${reference.lastIndex})`);
    }
  }

  for (const operation of history.operations) {
    if (operation.outcome === "pending") add("stuck", `client ${operation.client} ${operation.kind} invoked at +${operation.invokeAt}ms never finished`);
    else if (operation.endAt! - operation.invokeAt > options.stuckAfterMs) {
      add("stuck", `client ${operation.client} ${operation.kind} took ${operation.endAt! - operation.invokeAt}ms`);
    }
    if (!operation.body) continue;
    for (const server of servers) {
      const found = server.messages.get(operation.body);
      const count = found?.count ?? 0;
      if (operation.outcome === "ok" && count === 0) add("lost", `acknowledged ${operation.body} missing on server ${server.id}`);
      if (count > 1) add("duplicated", `${operation.body} present ${count} times on server ${server.id}`);
      if (operation.outcome === "fail" && count > 0) add("phantom", `${operation.body} reported failed (${operation.code}) but present on server ${server.id}`);
      if (operation.outcome === "ok" && found && operation.messageId !== undefined && found.id !== operation.messageId) {
        add("reordered", `${operation.body} acknowledged as message ${operation.messageId} but stored as ${found.id} on server ${server.id}`);
      }
    }
  }

  // Every reader sees each conversation in the servers' order: ids only grow, and ids match bodies.
  const checkSequence = (who: string, items: { id: number; body: string }[]) => {
    for (let i = 0; i < items.length; i += 1) {
      const stored = reference.messages.get(items[i].body);
      if (stored && stored.id !== items[i].id) add("reordered", `${who} saw ${items[i].body} as id ${items[i].id}, servers have ${stored.id}`);
      if (i > 0 && items[i].id <= items[i - 1].id) add("reordered", `${who} saw id ${items[i].id} after ${items[i - 1].id}`);
    }
  };
  for (const operation of history.operations) {
    if (operation.kind === "history" && operation.read) checkSequence(`client ${operation.client} history read at +${operation.invokeAt}ms`, operation.read);
  }

  // Pushes: each client sees every message of its conversations after it logged in, exactly once, in order.
  for (const [client, seen] of history.seen) {
    const byConversation = new Map<string, { id: number; body: string }[]>();
    const ids = new Set<number>();
    for (const item of seen) {
      if (ids.has(item.id)) add("push-duplicated", `client ${client} was shown message ${item.id} twice`);
      ids.add(item.id);
      let list = byConversation.get(item.conversation);
      if (!list) byConversation.set(item.conversation, (list = []));
      list.push(item);
    }
    for (const [conversation, items] of byConversation) checkSequence(`client ${client} pushes in ${conversation}`, items);
    const since = history.since.get(client) ?? 0;
    const me = options.usernames.get(client)!;
    for (const [body, stored] of reference.messages) {
      if (stored.id <= since) continue;
      const mine = stored.conversation === "#general" || stored.conversation.split(/[:,]/).includes(me);
      if (mine && !ids.has(stored.id)) add("push-lost", `client ${client} never saw message ${stored.id} (${body})`);
    }
  }
  return violations;
}

export function summarize(violations: Violation[]): string {
  if (violations.length === 0) return "no violations";
  const counts = new Map<ViolationClass, number>();
  for (const violation of violations) counts.set(violation.class, (counts.get(violation.class) ?? 0) + 1);
  return [...counts].map(([kind, count]) => `${kind}: ${count}`).join(", ");
}
