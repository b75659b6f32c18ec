// The editable input line: text, cursor and recall history. Pure; works in code points.

/** Lines kept for Up/Down recall. */
export const inputHistoryMax = 200;
/** Longest input line accepted (a message is at most consts.messageLengthMax). */
export const inputLengthMax = 8000;

export class InputLine {
  private chars: string[] = [];
  private position = 0;
  private readonly recall: string[] = [];
  private recallIndex: number | null = null;
  private draft = "";

  get text(): string {
    return this.chars.join("");
  }
  get cursor(): number {
    return this.position;
  }
  get length(): number {
    return this.chars.length;
  }

  set(text: string, cursor = [...text].length): void {
    this.chars = [...text].slice(0, inputLengthMax);
    this.position = Math.max(0, Math.min(cursor, this.chars.length));
  }

  insert(text: string): void {
    const incoming = [...text.replace(/[\u0000-\u001f\u007f]/g, "")];
    const room = inputLengthMax - this.chars.length;
    if (incoming.length === 0 || room <= 0) return;
    const accepted = incoming.slice(0, room);
    this.chars.splice(this.position, 0, ...accepted);
    this.position += accepted.length;
  }

  backspace(): void {
    if (this.position === 0) return;
    this.chars.splice(this.position - 1, 1);
    this.position -= 1;
  }

  deleteForward(): void {
    if (this.position < this.chars.length) this.chars.splice(this.position, 1);
  }

  deleteWordBack(): void {
    let start = this.position;
    while (start > 0 && this.chars[start - 1] === " ") start -= 1;
    while (start > 0 && this.chars[start - 1] !== " ") start -= 1;
    this.chars.splice(start, this.position - start);
    this.position = start;
  }

  left(): void {
    this.position = Math.max(0, this.position - 1);
  }
  right(): void {
    this.position = Math.min(this.chars.length, this.position + 1);
  }
  home(): void {
    this.position = 0;
  }
  end(): void {
    this.position = this.chars.length;
  }
  clear(): void {
    this.chars = [];
    this.position = 0;
  }

  /** Empties the line and returns what it held; `remember` puts it in the recall history (never for passwords). */
  take(remember: boolean): string {
    const text = this.text;
    this.clear();
    this.recallIndex = null;
    if (remember && text.trim().length > 0 && this.recall[this.recall.length - 1] !== text) {
      this.recall.push(text);
      if (this.recall.length > inputHistoryMax) this.recall.shift();
    }
    return text;
  }

  previous(): void {
    if (this.recall.length === 0) return;
    if (this.recallIndex === null) {
      this.draft = this.text;
      this.recallIndex = this.recall.length;
    }
    this.recallIndex = Math.max(0, this.recallIndex - 1);
    this.set(this.recall[this.recallIndex]);
  }

  next(): void {
    if (this.recallIndex === null) return;
    this.recallIndex += 1;
    if (this.recallIndex >= this.recall.length) {
      this.recallIndex = null;
      this.set(this.draft);
    } else {
      this.set(this.recall[this.recallIndex]);
    }
  }

  /** The slice of the line to show in `width` columns, keeping the cursor visible. */
  view(width: number): { before: string; at: string; after: string } {
    const room = Math.max(1, width);
    const start = Math.max(0, this.position - room + 1);
    const shown = this.chars.slice(start, start + room);
    const cursor = this.position - start;
    return { before: shown.slice(0, cursor).join(""), at: shown[cursor] ?? " ", after: shown.slice(cursor + 1).join("") };
  }
}
