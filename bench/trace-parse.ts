// Rebuilds the chain of each lone write (c=1) from kernel tracepoints: `perf script` output of the
// entry and exit of read, write, writev, pwrite64, fsync and fdatasync, for the whole machine. Pure: text in, step durations out (bench/trace.ts records).
//
// One write, as the syscalls show it:
//   primary   read(client) ... write(link A) write(link B) ... fsync ... read(ack A) read(ack B) ... writev(client)
//   backup    read(append) ... pwrite64 (its COMMIT) ... fdatasync ... write(ack)
// The links are the primary's two busiest `write` descriptors and the client socket its busiest
// `writev` one; that holds for a c=1 window, where nothing else writes that much.

export type TracePids = { primary: number; backups: [number, number] };

type Event = { t: number; name: string; fd: number | null };

/** Median of each step over the writes found, in µs, with how many writes were found. */
export type ChainSummary = { writes: number; medians: Record<ChainStep, number> };

export const chainSteps = [
  "primary: request read → first append written",
  "primary: first append → second append written",
  "primary: its own fsync",
  "first backup: append written → append read",
  "second backup: append written → append read",
  "first backup: append read → its COMMIT starts writing",
  "second backup: append read → its COMMIT starts writing",
  "backups: COMMIT's WAL writes (both)",
  "backups: fdatasync (both)",
  "backups: fdatasync done → ack written (both)",
  "primary: second append written → both acks read",
  "primary: acks in and own fsync done → response written",
  "load generator: response written → next request read",
  "whole cycle",
] as const;
export type ChainStep = (typeof chainSteps)[number];

const linePattern = /^\s*\S+\s+(\d+)\/(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)$/;

/** Parses `perf script -F comm,pid,tid,cpu,time,event,trace` lines into each tracked process's events. */
export function parsePerfScript(text: string, pids: TracePids): Map<number, Event[]> {
  const tracked = new Set([pids.primary, ...pids.backups]);
  const events = new Map<number, Event[]>([...tracked].map((pid) => [pid, []]));
  const lastFd = new Map<string, number | null>();
  for (const line of text.split("\n")) {
    const match = linePattern.exec(line);
    if (!match) continue;
    const pid = Number(match[1]);
    const tid = Number(match[2]);
    if (!tracked.has(pid)) continue;
    const t = Number(match[3]) * 1e6;
    const event = match[4];
    const rest = match[5];
    const syscall = /^syscalls:sys_(enter|exit)_(\w+)$/.exec(event);
    if (!syscall) continue;
    // A sync on a worker thread (libuv's pool) counts for its process; other worker syscalls do not.
    if (tid !== pid && !/sync$/.test(syscall[2])) continue;
    const key = `${tid}:${syscall[2]}`;
    let fd: number | null = null;
    if (syscall[1] === "enter") {
      const fdMatch = /fd: 0x([0-9a-f]+)/.exec(rest);
      fd = fdMatch ? parseInt(fdMatch[1], 16) : null;
      lastFd.set(key, fd);
    } else {
      fd = lastFd.get(key) ?? null;
    }
    events.get(pid)!.push({ t, name: `${syscall[1]}_${syscall[2]}`, fd });
  }
  for (const list of events.values()) list.sort((a, b) => a.t - b.t);
  return events;
}

function busiestFds(events: Event[], name: string, count: number): number[] {
  const counts = new Map<number, number>();
  for (const event of events) if (event.name === name && event.fd !== null) counts.set(event.fd, (counts.get(event.fd) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, count).map(([fd]) => fd);
}

/** The first event named `name` (on `fd`, if given) at or after `from` and before `until`. */
function next(events: Event[], from: number, name: string, until: number, fd?: number): number | undefined {
  // Binary search for the first event at or after `from`.
  let low = 0;
  let high = events.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (events[mid].t < from) low = mid + 1;
    else high = mid;
  }
  for (let i = low; i < events.length && events[i].t <= until; i += 1) {
    const event = events[i];
    if (event.name === name && (fd === undefined || event.fd === fd)) return event.t;
  }
  return undefined;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? NaN : sorted[Math.floor(sorted.length / 2)];
}

/** Each write's chain, summarized as the median of every step. Writes whose chain is incomplete are left out. */
export function summarizeChains(events: Map<number, Event[]>, pids: TracePids): ChainSummary {
  const primary = events.get(pids.primary)!;
  const [linkA, linkB] = busiestFds(primary, "enter_write", 2);
  const [client] = busiestFds(primary, "enter_writev", 1);
  const steps = new Map<ChainStep, number[]>(chainSteps.map((step) => [step, []]));
  const add = (step: ChainStep, value: number) => steps.get(step)!.push(value);
  let writes = 0;
  const windowUs = 20_000;
  for (const event of primary) {
    if (event.name !== "exit_read" || event.fd !== client || linkA === undefined || linkB === undefined) continue;
    const requestAt = event.t;
    const until = requestAt + windowUs;
    const sentA = next(primary, requestAt, "enter_write", until, linkA);
    const sentB = next(primary, requestAt, "enter_write", until, linkB);
    if (sentA === undefined || sentB === undefined) continue;
    const [first, second] = sentA <= sentB ? [sentA, sentB] : [sentB, sentA];
    const fsyncStart = next(primary, second, "enter_fsync", until);
    const fsyncEnd = fsyncStart === undefined ? undefined : next(primary, fsyncStart, "exit_fsync", until);
    const ackA = next(primary, second, "exit_read", until, linkA);
    const ackB = next(primary, second, "exit_read", until, linkB);
    if (fsyncStart === undefined || fsyncEnd === undefined || ackA === undefined || ackB === undefined) continue;
    const acksIn = Math.max(ackA, ackB);
    const answered = next(primary, acksIn, "enter_writev", until, client);
    if (answered === undefined) continue;
    const backups = pids.backups.map((pid) => {
      const list = events.get(pid)!;
      const read = next(list, first, "exit_read", until);
      const commit = read === undefined ? undefined : next(list, read, "enter_pwrite64", until);
      const syncStart = read === undefined ? undefined : next(list, read, "enter_fdatasync", until);
      const syncEnd = syncStart === undefined ? undefined : next(list, syncStart, "exit_fdatasync", until);
      const acked = syncEnd === undefined ? undefined : next(list, syncEnd, "enter_write", until);
      if (read === undefined || commit === undefined || syncStart === undefined || syncEnd === undefined || acked === undefined) return undefined;
      return { read, commit, syncStart, syncEnd, acked };
    });
    if (backups.some((backup) => backup === undefined)) continue;
    const [early, late] = (backups as NonNullable<(typeof backups)[number]>[]).sort((a, b) => a.read - b.read);
    const nextRequest = next(primary, answered, "exit_read", answered + windowUs, client);
    writes += 1;
    add("primary: request read → first append written", first - requestAt);
    add("primary: first append → second append written", second - first);
    add("primary: its own fsync", fsyncEnd - fsyncStart);
    add("first backup: append written → append read", early.read - first);
    add("second backup: append written → append read", late.read - first);
    add("first backup: append read → its COMMIT starts writing", early.commit - early.read);
    add("second backup: append read → its COMMIT starts writing", late.commit - late.read);
    for (const backup of [early, late]) {
      add("backups: COMMIT's WAL writes (both)", backup.syncStart - backup.commit);
      add("backups: fdatasync (both)", backup.syncEnd - backup.syncStart);
      add("backups: fdatasync done → ack written (both)", backup.acked - backup.syncEnd);
    }
    add("primary: second append written → both acks read", acksIn - second);
    add("primary: acks in and own fsync done → response written", answered - Math.max(acksIn, fsyncEnd));
    if (nextRequest !== undefined) {
      add("load generator: response written → next request read", nextRequest - answered);
      add("whole cycle", nextRequest - requestAt);
    }
  }
  const medians = Object.fromEntries(chainSteps.map((step) => [step, median(steps.get(step)!)])) as Record<ChainStep, number>;
  return { writes, medians };
}
