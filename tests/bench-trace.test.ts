// bench/trace-parse.ts rebuilds a lone write's chain from `perf script` lines. The lines below are
// in perf's own format (comm pid/tid [cpu] seconds: event: fields), written out for two writes with
// known gaps, so each step's median is known exactly. Events of untracked processes and of worker
// threads (other than their syncs) must not disturb it.
import { describe, expect, test } from "vitest";
import { parsePerfScript, summarizeChains, type ChainStep } from "../bench/trace-parse.js";

const primary = 100;
const backups: [number, number] = [200, 300];
// fds on the primary: links to the backups 21 and 22, the client 30; on each backup its link is 25.
const links = { a: 21, b: 22 };

function line(pid: number, tid: number, us: number, event: string, fields: string): string {
  const seconds = (1000 + us / 1e6).toFixed(6);
  return `            node ${pid}/${tid} [000]  ${seconds}:       syscalls:sys_${event}: ${fields}`;
}
const enter = (pid: number, us: number, call: string, fd: number, tid = pid) => line(pid, tid, us, `enter_${call}`, `fd: 0x${fd.toString(16).padStart(8, "0")}, buf: 0x1, count: 0x10`);
const exit = (pid: number, us: number, call: string, tid = pid) => line(pid, tid, us, `exit_${call}`, "0x10");

/** One write starting at `t0` µs; the second backup waits `wait` µs for a core. */
function write(t0: number, wait: number): string[] {
  const lines = [
    enter(primary, t0, "read", 30), exit(primary, t0 + 2, "read"), // request read at t0 + 2
    enter(primary, t0 + 102, "write", links.a), exit(primary, t0 + 110, "write"), // first append at +102
    enter(primary, t0 + 132, "write", links.b), exit(primary, t0 + 140, "write"), // second at +132
    enter(primary, t0 + 170, "fsync", 19), exit(primary, t0 + 470, "fsync"), // own fsync 300
  ];
  for (const [index, pid] of backups.entries()) {
    const read = t0 + 102 + (index === 0 ? 50 : wait);
    lines.push(
      enter(pid, read - 1, "read", 25), exit(pid, read, "read"),
      enter(pid, read + 120, "pwrite64", 19), exit(pid, read + 125, "pwrite64"), // work 120 before the COMMIT
      enter(pid, read + 150, "fdatasync", 26), exit(pid, read + 400, "fdatasync"), // WAL writes 30, fdatasync 250
      enter(pid, read + 410, "write", 25), exit(pid, read + 415, "write"), // ack 10 after the sync
    );
  }
  // Both acks are read 700 µs after the second append, the response 50 µs later.
  lines.push(enter(primary, t0 + 830, "read", links.a), exit(primary, t0 + 831, "read"));
  lines.push(enter(primary, t0 + 831, "read", links.b), exit(primary, t0 + 832, "read"));
  lines.push(enter(primary, t0 + 882, "writev", 30), exit(primary, t0 + 890, "writev"));
  return lines;
}

describe("the c=1 trace parser", () => {
  test("finds each write's chain and gives the median of every step", () => {
    // The next request is read 110 µs after each response is written (the load generator's turn).
    const text = [...write(0, 300), ...write(990, 320), ...write(1980, 300)].join("\n");
    const summary = summarizeChains(parsePerfScript(text, { primary, backups }), { primary, backups });
    expect(summary.writes).toBe(3);
    const expected: [ChainStep, number][] = [
      ["primary: request read → first append written", 100],
      ["primary: first append → second append written", 30],
      ["primary: its own fsync", 300],
      ["first backup: append written → append read", 50],
      ["second backup: append written → append read", 300],
      ["first backup: append read → its COMMIT starts writing", 120],
      ["backups: COMMIT's WAL writes (both)", 30],
      ["backups: fdatasync (both)", 250],
      ["backups: fdatasync done → ack written (both)", 10],
      ["primary: second append written → both acks read", 700],
      ["primary: acks in and own fsync done → response written", 50],
      ["load generator: response written → next request read", 110],
      ["whole cycle", 990],
    ];
    for (const [step, us] of expected) expect(summary.medians[step], step).toBeCloseTo(us, 3);
  });

  test("other processes, and worker threads' other syscalls, are not part of the chain", () => {
    const noise = [
      enter(999, 120, "write", links.a), // another process, on the same fd number, before the real send
      enter(backups[0], 160, "pwrite64", 19, 777), // a worker thread's write before the backup's COMMIT
      "some header line perf prints",
    ];
    const summary = summarizeChains(parsePerfScript([...write(0, 300), ...noise].join("\n"), { primary, backups }), { primary, backups });
    expect(summary.writes).toBe(1);
    expect(summary.medians["first backup: append read → its COMMIT starts writing"]).toBeCloseTo(120, 3);
    expect(summary.medians["primary: request read → first append written"]).toBeCloseTo(100, 3);
  });

  test("a sync on a worker thread counts for its process", () => {
    // The same write, with the second backup's fdatasync on a thread-pool thread (tid 301).
    const lines = write(0, 300).map((text) => (text.includes(" 300/300 ") && text.includes("fdatasync") ? text.replace(" 300/300 ", " 300/301 ") : text));
    const summary = summarizeChains(parsePerfScript(lines.join("\n"), { primary, backups }), { primary, backups });
    expect(summary.writes).toBe(1);
    expect(summary.medians["backups: fdatasync (both)"]).toBeCloseTo(250, 3);
  });
});
