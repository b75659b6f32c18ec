// Pure text layout for the terminal client: sanitizing, wrapping and the visible slice of a pane.
// Widths count code points, so wide characters (CJK, emoji) can overflow a row; rows are truncated
// by the renderer in that case.
import { formatClock } from "../utils.js";

export type LineKind = "message" | "own" | "system" | "error";

/** One logical line of a window: a message or a notice. Wrapped into rows for display. */
export type PaneLine = {
  key: string;
  ts: number;
  kind: LineKind;
  from?: string;
  text: string;
  messageId?: number;
  /** An own message echoed outside its conversation's window (irssi's "[msg(bob)] text"). */
  to?: string;
};

export type PaneRow = { text: string; kind: LineKind | "more" };

/** Replaces control characters (terminal escape injection) and tabs; keeps newlines for splitting. */
export function sanitize(text: string): string {
  return text.replace(/\t/g, "    ").replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/g, "?");
}

/** The prefix a line shows before its text, e.g. "12:34 <alice> " or "12:34 -!- ". */
export function linePrefix(line: PaneLine): string {
  const clock = formatClock(line.ts);
  if (line.to !== undefined) return `${clock} [msg(${line.to})] `;
  if (line.kind === "message" || line.kind === "own") return `${clock} <${line.from ?? "?"}> `;
  return `${clock} -!- `;
}

/** Hard-wraps `text` to `width`, breaking at the last space when there is one; continuation rows get `indent`. */
export function wrapText(text: string, width: number, indent = 0): string[] {
  const safeWidth = Math.max(1, width);
  const pad = indent < safeWidth / 2 ? " ".repeat(indent) : "";
  const rows: string[] = [];
  for (const paragraph of sanitize(text).split("\n")) {
    let rest = [...paragraph];
    let first = rows.length === 0;
    if (rest.length === 0) rows.push(first ? "" : pad);
    while (rest.length > 0) {
      const room = first ? safeWidth : safeWidth - pad.length;
      let take = Math.min(room, rest.length);
      if (take < rest.length) {
        const space = rest.lastIndexOf(" ", take);
        if (space > room / 3) take = space + 1;
      }
      rows.push((first ? "" : pad) + rest.slice(0, take).join("").trimEnd());
      rest = rest.slice(take);
      first = false;
    }
  }
  return rows;
}

export function lineRows(line: PaneLine, width: number): PaneRow[] {
  const prefix = linePrefix(line);
  return wrapText(prefix + line.text, width, [...prefix].length).map((text) => ({ text, kind: line.kind }));
}

/**
 * The rows a pane of `height` shows. `scrollTop` is the first row shown, or null to follow the
 * bottom. While scrolled, the last row is a "-- more --" hint.
 */
export function visibleRows(lines: readonly PaneLine[], width: number, height: number, scrollTop: number | null): { rows: PaneRow[]; total: number; top: number } {
  const all = lines.flatMap((line) => lineRows(line, width));
  const total = all.length;
  if (height <= 0) return { rows: [], total, top: 0 };
  if (scrollTop === null || scrollTop >= Math.max(0, total - height)) {
    const top = Math.max(0, total - height);
    return { rows: all.slice(top), total, top };
  }
  const top = Math.max(0, scrollTop);
  const below = total - (top + height - 1);
  const rows = all.slice(top, top + height - 1);
  rows.push({ text: `-- more -- (${below} more line${below === 1 ? "" : "s"} below; PgDn)`, kind: "more" });
  return { rows, total, top };
}

/** Pads or cuts `text` to exactly `width` code points. */
export function fit(text: string, width: number): string {
  const chars = [...text];
  if (chars.length >= width) return chars.slice(0, Math.max(0, width)).join("");
  return text + " ".repeat(width - chars.length);
}
