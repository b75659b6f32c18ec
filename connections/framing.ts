// Newline-delimited JSON framing with a hard bound on frame size.
// The reader never buffers more than maxBytes of an unfinished line.

export type FrameSink = {
  onFrame: (line: string) => void;
  /** A line grew past maxBytes; the rest of the stream cannot be trusted to be framed. */
  onOversize: () => void;
};

export class LineReader {
  private chunks: Buffer[] = [];
  private pendingBytes = 0;
  private dead = false;

  constructor(
    private readonly maxBytes: number,
    private readonly sink: FrameSink,
  ) {}

  push(data: Buffer): void {
    if (this.dead) return;
    let start = 0;
    for (;;) {
      const newline = data.indexOf(10, start);
      if (newline === -1) break;
      const piece = data.subarray(start, newline);
      start = newline + 1;
      if (this.pendingBytes + piece.length > this.maxBytes) return this.oversize();
      const line = this.chunks.length === 0 ? piece.toString("utf8") : Buffer.concat([...this.chunks, piece]).toString("utf8");
      this.chunks = [];
      this.pendingBytes = 0;
      if (line.length > 0 && line !== "\r") this.sink.onFrame(line);
      if (this.dead) return;
    }
    const rest = data.subarray(start);
    if (rest.length === 0) return;
    if (this.pendingBytes + rest.length > this.maxBytes) return this.oversize();
    this.chunks.push(Buffer.from(rest));
    this.pendingBytes += rest.length;
  }

  private oversize(): void {
    this.dead = true;
    this.chunks = [];
    this.sink.onOversize();
  }
}

export function encodeFrame(value: unknown): string {
  return `${JSON.stringify(value)}\n`;
}
