// Summarizes a V8 heap snapshot (written by a server started with --heapsnapshot-signal): what the
// JavaScript heap holds, by kind and by constructor, to explain a server's RSS.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";

type Snapshot = {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] }; node_count: number };
  nodes: number[];
  strings: string[];
};

export type HeapRow = { name: string; count: number; mb: number };
export type HeapSummary = { totalMb: number; byType: HeapRow[]; topObjects: HeapRow[] };

const snapshotWaitMsMax = 120_000;

/** Waits until a .heapsnapshot file appears in `dir` and its size stops changing; returns its path. */
export async function waitForSnapshot(dir: string, known: Set<string>): Promise<string | undefined> {
  const deadline = performance.now() + snapshotWaitMsMax;
  let lastSize = -1;
  let stableSince = 0;
  while (performance.now() < deadline) {
    const file = readdirSync(dir).find((name) => name.endsWith(".heapsnapshot") && !known.has(name));
    if (file) {
      const size = statSync(join(dir, file)).size;
      if (size === lastSize && size > 0) {
        if (performance.now() - stableSince > 1000) return join(dir, file);
      } else {
        lastSize = size;
        stableSince = performance.now();
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return undefined;
}

/** Self sizes summed by node type, and by constructor name for objects (the biggest `top`). */
export function summarizeHeap(path: string, top = 12): HeapSummary {
  const snapshot = JSON.parse(readFileSync(path, "utf8")) as Snapshot;
  const fields = snapshot.snapshot.meta.node_fields;
  const types = snapshot.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeField = fields.indexOf("type");
  const nameField = fields.indexOf("name");
  const sizeField = fields.indexOf("self_size");
  const byType = new Map<string, { count: number; bytes: number }>();
  const byObject = new Map<string, { count: number; bytes: number }>();
  let total = 0;
  const add = (map: Map<string, { count: number; bytes: number }>, key: string, bytes: number) => {
    const row = map.get(key) ?? { count: 0, bytes: 0 };
    row.count += 1;
    row.bytes += bytes;
    map.set(key, row);
  };
  for (let offset = 0; offset < snapshot.nodes.length; offset += width) {
    const type = types[snapshot.nodes[offset + typeField]];
    const bytes = snapshot.nodes[offset + sizeField];
    total += bytes;
    add(byType, type, bytes);
    if (type === "object" || type === "native" || type === "array") add(byObject, `${type === "object" ? "" : `(${type}) `}${snapshot.strings[snapshot.nodes[offset + nameField]]}`, bytes);
  }
  const rows = (map: Map<string, { count: number; bytes: number }>, limit: number) =>
    [...map.entries()]
      .sort((a, b) => b[1].bytes - a[1].bytes)
      .slice(0, limit)
      .map(([name, row]) => ({ name, count: row.count, mb: row.bytes / 1024 / 1024 }));
  return { totalMb: total / 1024 / 1024, byType: rows(byType, 10), topObjects: rows(byObject, top) };
}
