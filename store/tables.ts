// Table definitions. `log` and `meta` belong to this server; every other table is replicated state,
// rebuilt exactly by replaying the log (see Store.stateDigest and tests/replay.test.ts). The log's
// `response` column is replicated state too: apply computes it, so every server writes the same one.

/**
 * Bumped when the file format changes, or what an entry means: a log is replayed, so a change to
 * how a command applies is a format change too (format 6: read_undelivered pages are bounded in
 * characters, consts.ts undeliveredPageCharsMax). A server refuses a data directory of another version.
 */
export const schemaVersion = 6;

// The log is a rowid table (idx is the rowid), not WITHOUT ROWID: its rows are ~700 bytes, and an
// append to a rowid table's last leaf starts a new leaf when it is full, where a WITHOUT ROWID B-tree
// rebalances the last leaves on every split. Measured on appends of one row per transaction: 1.41
// WAL pages per row against 2.56, and 30% less CPU (format 5; docs/architecture.md §3).
export const logTablesSql = `
CREATE TABLE IF NOT EXISTS log (
  idx        INTEGER PRIMARY KEY,
  epoch      INTEGER NOT NULL,
  kind       TEXT    NOT NULL,          -- 'config', 'bootstrap' or 'command'
  client_id  TEXT,
  request_id INTEGER,
  body       TEXT    NOT NULL,          -- the command as JSON
  response   TEXT                       -- the response data as JSON, for exactly-once retries; null without a request id
);
CREATE INDEX IF NOT EXISTS log_kind ON log(kind, idx) WHERE kind != 'command';
-- Exactly-once: a retried (client id, request id) finds its original entry, and its response, through
-- this index. It lags the log on purpose: the Store keeps the newest requests in memory and moves
-- them here in chunks of committed entries (a catch-up's at once). Indexing each write as it is logged dirtied
-- one page of this B-tree per client per commit; a chunk touches each client's page once.
CREATE TABLE IF NOT EXISTS request_index (
  client_id  TEXT    NOT NULL,
  request_id INTEGER NOT NULL,
  idx        INTEGER NOT NULL,          -- the log entry that carried the request
  PRIMARY KEY (client_id, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
`;

/** Replicated state tables, in the order the digest reads them. */
export const stateTableNames = [
  "users",
  "sessions",
  "channels",
  "memberships",
  "messages",
  "read_markers",
  "notices",
  "dm_partners",
] as const;

export const stateTablesSql = `
CREATE TABLE IF NOT EXISTS users (
  id          INTEGER PRIMARY KEY,      -- log index of the registration
  name        TEXT    NOT NULL,
  name_key    TEXT    NOT NULL,         -- lower-cased name: names are unique ignoring case
  salt        TEXT    NOT NULL,
  hash        TEXT    NOT NULL,
  created_ts  INTEGER NOT NULL,
  deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS users_live_name ON users(name_key) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS sessions (
  session_id  TEXT    PRIMARY KEY,
  user_id     INTEGER NOT NULL,
  created_ts  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_id);
CREATE TABLE IF NOT EXISTS channels (
  id          INTEGER PRIMARY KEY,      -- log index of the creation
  name        TEXT    NOT NULL UNIQUE,
  topic       TEXT    NOT NULL,
  admin_id    INTEGER,                  -- null for default channels
  is_default  INTEGER NOT NULL,
  created_ts  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
  channel_id  INTEGER NOT NULL,
  user_id     INTEGER NOT NULL,
  joined_seq  INTEGER NOT NULL,
  PRIMARY KEY (channel_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_user ON memberships(user_id, channel_id);
CREATE TABLE IF NOT EXISTS messages (
  id           INTEGER PRIMARY KEY,     -- log index of the send; also the event seq
  channel_id   INTEGER,                 -- set for channel posts
  dm_key       TEXT,                    -- 'low:high' user ids, set for direct messages
  sender_id    INTEGER NOT NULL,
  recipient_id INTEGER,                 -- set for direct messages
  body         TEXT    NOT NULL,
  ts           INTEGER NOT NULL,
  delivered    INTEGER NOT NULL,        -- DMs: pushed at send time or fetched with read_undelivered
  deleted_seq  INTEGER                  -- log index of the deletion
);
CREATE INDEX IF NOT EXISTS messages_channel ON messages(channel_id, id) WHERE channel_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_dm ON messages(dm_key, id) WHERE dm_key IS NOT NULL;
-- deleted_seq is in the key so that counting a queue (read_undelivered's remaining, unread) reads this
-- index alone: a check of deleted_seq in the table read every queued row, 4 KB ones with their overflow
-- pages. Reading out 8,000 long DMs, that count was 69% of every server's busy time, ~13 ms a page (format 6).
CREATE INDEX IF NOT EXISTS messages_undelivered ON messages(recipient_id, deleted_seq, id) WHERE delivered = 0;
CREATE INDEX IF NOT EXISTS messages_deleted ON messages(deleted_seq) WHERE deleted_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS read_markers (
  user_id     INTEGER NOT NULL,
  conv_key    TEXT    NOT NULL,         -- 'c:<channel id>' or 'd:<other user id>'
  message_id  INTEGER NOT NULL,
  PRIMARY KEY (user_id, conv_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notices (
  user_id     INTEGER NOT NULL,
  seq         INTEGER NOT NULL,
  ord         INTEGER NOT NULL,         -- order among the events of one entry
  body        TEXT    NOT NULL,
  PRIMARY KEY (user_id, seq, ord)
) WITHOUT ROWID;
-- Who has a direct-message conversation with whom (both directions; a DM to yourself is one row):
-- exactly the pairs some messages row links. Lets auth and login list a user's conversations without
-- scanning every message.
CREATE TABLE IF NOT EXISTS dm_partners (
  user_id     INTEGER NOT NULL,
  other_id    INTEGER NOT NULL,
  PRIMARY KEY (user_id, other_id)
) WITHOUT ROWID;
`;
