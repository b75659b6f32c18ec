// The bare pipeline: the I/O of a replicated Chat+ write and nothing else, as a floor for the bench.
//
// One primary and two backups. The primary speaks the few requests the bench's load generator sends
// (hello, register, create_channel, join_channel, post, send_dm) with the same response and event
// lines as the real server. All posts and DMs read in one event-loop turn form one batch:
//   - one append frame to each backup, sent before the primary's own commit;
//   - one SQLite transaction on the primary, one ~400-byte row per write. Like the real primary, it
//     commits a batch of syncOffLoopBatchMin writes or more at synchronous=NORMAL and fdatasyncs the
//     -wal file off the event loop, and a smaller batch at synchronous=FULL;
//   - each backup logs the frames of one socket read in one synchronous=FULL transaction and acks.
// The primary answers a batch's writers and pushes its messages to the online members once both
// backups acked it and its own fsync returned. Batches are pipelined: new ones go out while older
// ones wait for their acks.
//
// Left out on purpose, because it is what Chat+ adds: validation, sessions, the chat tables and
// their indexes, exactly-once request ids, the undo journal, the replication core (epochs, configs,
// heartbeats, in-sync set) and all recovery. Chat+'s cost per write is this plus its own work.
//
// Usage: node --import tsx bench/bare-server.ts backup DBFILE
//        node --import tsx bench/bare-server.ts primary DBFILE BACKUP_PORT BACKUP_PORT
// It listens on 127.0.0.1 (a free port) and prints "port N" on stdout once it accepts connections.
import Database from "better-sqlite3";
import assert from "node:assert/strict";
import { fdatasync, openSync } from "node:fs";
import net from "node:net";
import { syncOffLoopBatchMin } from "../connections/consts.js";

const [role, dbFile, ...backupPorts] = process.argv.slice(2);
if ((role !== "primary" && role !== "backup") || !dbFile || (role === "primary" && backupPorts.length !== 2)) {
  process.stderr.write("usage: bare-server.ts backup DBFILE | primary DBFILE PORT PORT\n");
  process.exit(2);
}

const db = new Database(dbFile);
db.pragma("journal_mode = WAL");
db.exec("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, body TEXT NOT NULL)");
const insert = db.prepare("INSERT INTO log (idx, body) VALUES (?, ?)");
const logBatch = db.transaction((first: number, bodies: string[]) => {
  for (let offset = 0; offset < bodies.length; offset += 1) insert.run(first + offset, bodies[offset]);
});
const syncFull = db.prepare("PRAGMA synchronous = FULL");
const syncNormal = db.prepare("PRAGMA synchronous = NORMAL");
// After the statements above: SQLite applies a PRAGMA when it is prepared, so preparing syncNormal
// left every connection at NORMAL, and the backups acked without an fsync (found by strace).
const synchronousLevel = role === "primary" ? 1 : 2; // NORMAL, FULL
db.pragma(`synchronous = ${synchronousLevel}`);
assert.equal(db.pragma("synchronous", { simple: true }), synchronousLevel, "the connection runs at the synchronous level set");

/** Splits a socket's data into lines; `done` runs after the lines of each chunk. */
function onLines(socket: net.Socket, handle: (line: string) => void, done?: () => void): void {
  let tail = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => {
    const text = tail + chunk;
    let start = 0;
    for (let newline = text.indexOf("\n"); newline !== -1; newline = text.indexOf("\n", start)) {
      handle(text.slice(start, newline));
      start = newline + 1;
    }
    tail = text.slice(start);
    done?.();
  });
  socket.on("error", () => {});
}

function listen(onSocket: (socket: net.Socket) => void): void {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    onSocket(socket);
  });
  server.listen(0, "127.0.0.1", () => process.stdout.write(`port ${(server.address() as net.AddressInfo).port}\n`));
}

// ---- backup ------------------------------------------------------------------------------------

type AppendFrame = { first: number; bodies: string[] };

if (role === "backup") {
  // The frames of one socket read share one transaction, one fsync and one ack.
  listen((socket) => {
    let frames: AppendFrame[] = [];
    const logFrames = db.transaction((batch: AppendFrame[]) => {
      for (const frame of batch) for (let offset = 0; offset < frame.bodies.length; offset += 1) insert.run(frame.first + offset, frame.bodies[offset]);
    });
    onLines(
      socket,
      (line) => frames.push(JSON.parse(line) as AppendFrame),
      () => {
        if (frames.length === 0) return;
        const last = frames[frames.length - 1];
        logFrames(frames);
        frames = [];
        socket.write(`{"ack":${last.first + last.bodies.length - 1}}\n`);
      },
    );
  });
}

// ---- primary -----------------------------------------------------------------------------------

/** A client connection; what a turn writes to it goes out in one socket write. */
type Client = { socket: net.Socket; out: string; name: string };
type Write = { client: Client; id: number; body: string; message: Record<string, unknown>; pushes: { to: Client[]; line: string }[] };
type Batch = { last: number; writes: Write[]; synced: boolean };

const online = new Map<string, Client>();
const channels = new Map<string, Set<string>>();
const inflight: Batch[] = [];
const acked = [0, 0];
let nextIndex = 1;
let pending: Write[] = [];
const touched = new Set<Client>();

function send(client: Client, line: string): void {
  if (client.out === "") touched.add(client);
  client.out += line;
}

function flushClients(): void {
  for (const client of touched) {
    client.socket.write(client.out);
    client.out = "";
  }
  touched.clear();
}

function ok(id: number, data: Record<string, unknown>): string {
  return `${JSON.stringify({ v: 1, type: "ok", id, data })}\n`;
}

function event(seq: number, message: Record<string, unknown>): string {
  return `${JSON.stringify({ v: 1, type: "event", seq, event: { kind: "message", message } })}\n`;
}

/** Answers every batch that both backups acked and the primary synced, oldest first. */
function answerDone(): void {
  while (inflight.length > 0 && inflight[0].synced && Math.min(acked[0], acked[1]) >= inflight[0].last) {
    const batch = inflight.shift()!;
    for (const write of batch.writes) {
      send(write.client, ok(write.id, { message: write.message }));
      for (const push of write.pushes) for (const member of push.to) send(member, push.line);
    }
  }
  flushClients();
}

function commitPending(): void {
  const writes = pending;
  pending = [];
  const first = nextIndex;
  nextIndex += writes.length;
  const bodies = writes.map((write) => write.body);
  const frame = `${JSON.stringify({ first, bodies } satisfies AppendFrame)}\n`;
  for (const backup of backups) backup.write(frame);
  const batch: Batch = { last: nextIndex - 1, writes, synced: false };
  inflight.push(batch);
  if (writes.length < syncOffLoopBatchMin) {
    syncFull.run();
    logBatch(first, bodies);
    syncNormal.run();
    batch.synced = true;
    return answerDone();
  }
  logBatch(first, bodies);
  fdatasync(walFd, (error) => {
    if (error) throw error;
    batch.synced = true;
    answerDone();
  });
}

function propose(write: Write): void {
  if (pending.length === 0) setImmediate(commitPending);
  pending.push(write);
}

function handle(client: Client, line: string): void {
  const request = JSON.parse(line) as Record<string, any>;
  const { id, type } = request;
  const ts = Date.now();
  switch (type) {
    case "hello":
      return void client.socket.write(ok(id, { serverId: 1, role: "primary", epoch: 1 }));
    case "register":
      client.name = String(request.username);
      online.set(client.name.toLowerCase(), client);
      return void client.socket.write(ok(id, { username: client.name, token: `bare-${client.name}`, channels: [] }));
    case "create_channel":
    case "join_channel": {
      const members = channels.get(request.channel) ?? new Set<string>();
      members.add(client.name.toLowerCase());
      channels.set(request.channel, members);
      return void client.socket.write(ok(id, { channel: request.channel }));
    }
    case "post": {
      const index = nextIndex + pending.length;
      const message = { id: index, conversation: `#${request.channel}`, from: client.name, body: request.body, ts };
      const to = [...(channels.get(request.channel) ?? [])].map((name) => online.get(name)).filter((member) => member !== undefined);
      const body = JSON.stringify({ op: "post", actor: 1, channel: request.channel, body: request.body, ts });
      return propose({ client, id, body, message, pushes: [{ to, line: event(index, message) }] });
    }
    case "send_dm": {
      const index = nextIndex + pending.length;
      const recipient = online.get(String(request.to).toLowerCase());
      const message = { id: index, conversation: `@${request.to}`, from: client.name, to: request.to, body: request.body, ts };
      const pushes = [{ to: [client], line: event(index, message) }];
      if (recipient && recipient !== client) pushes.push({ to: [recipient], line: event(index, { ...message, conversation: `@${client.name}` }) });
      const body = JSON.stringify({ op: "send_dm", actor: 1, to: request.to, body: request.body, ts, delivered: recipient !== undefined });
      return propose({ client, id, body, message, pushes });
    }
    default:
      client.socket.write(`${JSON.stringify({ v: 1, type: "error", id, code: "BARE_UNKNOWN", message: `bare server has no ${type}` })}\n`);
  }
}

const walFd = role === "primary" ? openSync(`${dbFile}-wal`, "r+") : -1;
const backups: net.Socket[] = [];

if (role === "primary") {
  for (const [position, port] of backupPorts.entries()) {
    const socket = net.connect({ host: "127.0.0.1", port: Number(port), noDelay: true });
    socket.on("close", () => process.exit(1)); // a bare pipeline has no failover
    onLines(socket, (line) => {
      acked[position] = (JSON.parse(line) as { ack: number }).ack;
      answerDone();
    });
    backups.push(socket);
  }
  listen((socket) => {
    const client: Client = { socket, out: "", name: "" };
    onLines(socket, (line) => handle(client, line));
    socket.on("close", () => {
      if (client.name && online.get(client.name.toLowerCase()) === client) online.delete(client.name.toLowerCase());
    });
  });
}
