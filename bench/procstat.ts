// CPU, memory and disk writes of processes, read from /proc (Linux only): per-PID CPU time (utime +
// stime, all threads), resident memory (VmRSS), bytes written to storage and the main thread's wait
// for a core, plus whole-machine CPU from /proc/stat and the data disk's counters from /sys/dev/block.
import { execFileSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { benchSampleIntervalMs } from "./consts.js";

let clockTicksPerSecond: number | undefined;

/** sysconf(_SC_CLK_TCK): the unit of utime/stime in /proc/<pid>/stat. */
export function clockTicks(): number {
  if (clockTicksPerSecond === undefined) {
    try {
      clockTicksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      clockTicksPerSecond = 100;
    }
  }
  return clockTicksPerSecond;
}

/** CPU seconds (user + system) a process has used so far, or undefined if it is gone. */
export function processCpuSeconds(pid: number): number | undefined {
  const stat = readProc(`/proc/${pid}/stat`);
  if (stat === undefined) return undefined;
  // The command name (field 2) may contain spaces; fields after it are fixed. utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicks();
}

/** A /proc or /sys file's text, or undefined if it cannot be read (the process is gone, or Linux does not offer it). */
function readProc(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** Resident set size in MB, or undefined if the process is gone. */
export function processRssMb(pid: number): number | undefined {
  const match = /VmRSS:\s+(\d+) kB/.exec(readProc(`/proc/${pid}/status`) ?? "");
  return match ? Number(match[1]) / 1024 : undefined;
}

/** Bytes a process has caused to be written to storage so far (/proc/<pid>/io write_bytes), or undefined. */
export function processWrittenBytes(pid: number): number | undefined {
  const match = /^write_bytes: (\d+)$/m.exec(readProc(`/proc/${pid}/io`) ?? "");
  return match ? Number(match[1]) : undefined;
}

/**
 * Nanoseconds a process's main thread has spent waiting on a run queue (runnable, but no core free),
 * from /proc/<pid>/schedstat, or undefined. The main thread is the event loop.
 */
export function processRunDelayNs(pid: number): number | undefined {
  const fields = readProc(`/proc/${pid}/schedstat`)?.trim().split(/\s+/);
  return fields !== undefined && fields.length >= 2 ? Number(fields[1]) : undefined;
}

/** Counters of the block device holding `dir` (/sys/dev/block/<major>:<minor>/stat), or undefined. */
type DeviceCounters = { writes: number; writeMs: number; flushes: number; flushMs: number; busyMs: number };

function deviceCounters(dir: string): DeviceCounters | undefined {
  try {
    const dev = statSync(dir).dev;
    const major = (dev >> 8) & 0xfff;
    const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    const fields = (readProc(`/sys/dev/block/${major}:${minor}/stat`) ?? "").trim().split(/\s+/).map(Number);
    // Documentation/block/stat.rst: writes completed 4, write ticks 7, io_ticks 9, flushes 15, flush ticks 16.
    if (fields.length < 17) return undefined;
    return { writes: fields[4], writeMs: fields[7], busyMs: fields[9], flushes: fields[15], flushMs: fields[16] };
  } catch {
    return undefined;
  }
}

/** What the disk holding the servers' data did during a window, as the kernel's block layer saw it. */
export type DiskUsage = {
  writesPerSecond: number;
  /** Mean time from queueing a write to its completion. */
  msPerWrite: number;
  flushesPerSecond: number;
  msPerFlush: number;
  /** Share of the window with at least one request in flight. */
  busyPercent: number;
};

/** Busy and total jiffies of the whole machine (all cores). */
function machineJiffies(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const total = values.reduce((sum, value) => sum + value, 0);
  const idle = values[3] + (values[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

export type ProcessUsage = {
  label: string;
  pid: number;
  cpuPercent: number;
  rssMb: number;
  rssMaxMb: number;
  /** KB per second the process caused to be written to storage (optional: reports saved before it existed). */
  writtenKbPerSecond?: number;
  /** Share of the window its main thread was runnable but waiting for a core (optional, as above). */
  runQueueWaitPercent?: number;
};
export type UsageReport = {
  processes: ProcessUsage[];
  /** Whole machine, 100% = one core busy (so 2 cores = 200%). */
  machineCpuPercent: number;
  /** This (load generator) process. */
  benchCpuPercent: number;
  /** The block device under the servers' data (absent where /sys does not tell). */
  disk?: DiskUsage;
};

/**
 * Measures CPU% of each process between start() and stop(), and samples RSS every
 * benchSampleIntervalMs in between (RSS is reported at stop and as the maximum seen).
 */
export class UsageSampler {
  private cpuStart = new Map<number, number>();
  private writtenStart = new Map<number, number>();
  private runDelayStart = new Map<number, number>();
  private deviceStart: DeviceCounters | undefined;
  private rssMax = new Map<number, number>();
  private startedAt = 0;
  private machineStart = { busy: 0, total: 0 };
  private benchStart: NodeJS.CpuUsage = { user: 0, system: 0 };
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly targets: { label: string; pid: number }[],
    /** A directory on the servers' file system (the bench keeps their data under os.tmpdir()). */
    private readonly dataDir = tmpdir(),
  ) {}

  start(): void {
    this.startedAt = performance.now();
    this.machineStart = machineJiffies();
    this.benchStart = process.cpuUsage();
    for (const { pid } of this.targets) {
      this.cpuStart.set(pid, processCpuSeconds(pid) ?? 0);
      this.rssMax.set(pid, processRssMb(pid) ?? 0);
      this.writtenStart.set(pid, processWrittenBytes(pid) ?? NaN);
      this.runDelayStart.set(pid, processRunDelayNs(pid) ?? NaN);
    }
    this.deviceStart = deviceCounters(this.dataDir);
    this.timer = setInterval(() => this.sampleRss(), benchSampleIntervalMs);
  }

  private sampleRss(): void {
    for (const { pid } of this.targets) {
      const rss = processRssMb(pid);
      if (rss !== undefined) this.rssMax.set(pid, Math.max(this.rssMax.get(pid) ?? 0, rss));
    }
  }

  stop(): UsageReport {
    if (this.timer) clearInterval(this.timer);
    this.sampleRss();
    const seconds = (performance.now() - this.startedAt) / 1000;
    const machine = machineJiffies();
    const bench = process.cpuUsage(this.benchStart);
    const processes = this.targets.map(({ label, pid }) => {
      const cpu = processCpuSeconds(pid);
      return {
        label,
        pid,
        cpuPercent: cpu === undefined ? NaN : ((cpu - (this.cpuStart.get(pid) ?? 0)) / seconds) * 100,
        rssMb: processRssMb(pid) ?? NaN,
        rssMaxMb: this.rssMax.get(pid) ?? NaN,
        writtenKbPerSecond: ((processWrittenBytes(pid) ?? NaN) - (this.writtenStart.get(pid) ?? NaN)) / 1024 / seconds,
        runQueueWaitPercent: (((processRunDelayNs(pid) ?? NaN) - (this.runDelayStart.get(pid) ?? NaN)) / 1e9 / seconds) * 100,
      };
    });
    const device = deviceCounters(this.dataDir);
    const start = this.deviceStart;
    const disk =
      device && start
        ? {
            writesPerSecond: (device.writes - start.writes) / seconds,
            msPerWrite: (device.writeMs - start.writeMs) / Math.max(1, device.writes - start.writes),
            flushesPerSecond: (device.flushes - start.flushes) / seconds,
            msPerFlush: (device.flushMs - start.flushMs) / Math.max(1, device.flushes - start.flushes),
            busyPercent: ((device.busyMs - start.busyMs) / 1000 / seconds) * 100,
          }
        : undefined;
    const cores = (machine.total - this.machineStart.total) / (clockTicks() * seconds);
    const machineCpuPercent = ((machine.busy - this.machineStart.busy) / (machine.total - this.machineStart.total)) * cores * 100;
    return { processes, machineCpuPercent, benchCpuPercent: ((bench.user + bench.system) / 1e6 / seconds) * 100, disk };
  }
}

export type MemoryBreakdown = Record<string, number>;

/**
 * RSS of a process split by mapping (from /proc/<pid>/smaps), in MB: anonymous memory (the V8 heap,
 * mmap'd malloc arenas, thread stacks), the brk heap (malloc), the node binary, shared libraries
 * and native addons, SQLite's WAL index (-shm) and other files.
 */
export function memoryBreakdown(pid: number): MemoryBreakdown | undefined {
  const text = readProc(`/proc/${pid}/smaps`);
  if (text === undefined) return undefined;
  const totals: MemoryBreakdown = {};
  let category = "anonymous (V8 heap, malloc arenas, stacks)";
  for (const line of text.split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (header) {
      const path = header[1].trim();
      if (path === "" || path.startsWith("[anon")) category = "anonymous (V8 heap, malloc arenas, stacks)";
      else if (path === "[heap]") category = "malloc brk heap";
      else if (path.startsWith("[stack")) category = "main thread stack";
      else if (path.startsWith("[")) category = "kernel mappings";
      else if (path.endsWith("-shm")) category = "SQLite WAL index (-shm)";
      else if (path === process.execPath || /\/node$/.test(path)) category = "node binary";
      else if (/\.(so(\.\d+)*|node)$/.test(path)) category = "shared libraries and native addons";
      else category = "other files";
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) totals[category] = (totals[category] ?? 0) + Number(rss[1]) / 1024;
  }
  return totals;
}
