// The simulated clock and event queue. Time is an integer number of milliseconds that only the
// scheduler advances; events at the same time run in the order they were scheduled, so a run is a
// pure function of its seed.

type Task = { at: number; seq: number; run: () => void };

export class Scheduler {
  private current = 0;
  private seq = 0;
  private readonly heap: Task[] = [];
  /** Events run so far. */
  steps = 0;

  get now(): number {
    return this.current;
  }

  get pending(): number {
    return this.heap.length;
  }

  at(time: number, run: () => void): void {
    if (!Number.isInteger(time)) throw new Error(`simulated time must be whole milliseconds, got ${time}`);
    if (time < this.current) throw new Error(`cannot schedule in the past (${time} < ${this.current})`);
    this.push({ at: time, seq: this.seq++, run });
  }

  after(delayMs: number, run: () => void): void {
    this.at(this.current + delayMs, run);
  }

  /** Runs the next event; false when the queue is empty or the next event is after `until`. */
  step(until: number): boolean {
    const top = this.heap[0];
    if (top === undefined || top.at > until) return false;
    const task = this.pop();
    this.current = task.at;
    this.steps += 1;
    task.run();
    return true;
  }

  /** Moves the clock forward to `time` when nothing else is due before it. */
  advanceTo(time: number): void {
    if (time > this.current) this.current = time;
  }

  private less(a: Task, b: Task): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private push(task: Task): void {
    const heap = this.heap;
    heap.push(task);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (!this.less(heap[index], heap[parent])) break;
      [heap[index], heap[parent]] = [heap[parent], heap[index]];
      index = parent;
    }
  }

  private pop(): Task {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let index = 0;
      for (;;) {
        const left = index * 2 + 1;
        const right = left + 1;
        let smallest = index;
        if (left < heap.length && this.less(heap[left], heap[smallest])) smallest = left;
        if (right < heap.length && this.less(heap[right], heap[smallest])) smallest = right;
        if (smallest === index) break;
        [heap[index], heap[smallest]] = [heap[smallest], heap[index]];
        index = smallest;
      }
    }
    return top;
  }
}
