// The history of a fault run: every operation as invoke then ok, fail or unknown, with timestamps,
// and every push event each client saw, in arrival order.

export type Outcome = "ok" | "fail" | "unknown" | "pending";

export type Operation = {
  client: number;
  kind: "post" | "dm" | "history";
  conversation: string;
  /** Unique body of a write. */
  body?: string;
  invokeAt: number;
  endAt?: number;
  outcome: Outcome;
  code?: string;
  messageId?: number;
  /** For history reads: ids and bodies returned, in order. */
  read?: { id: number; body: string }[];
};

export type Seen = { id: number; conversation: string; body: string };

export class History {
  readonly operations: Operation[] = [];
  /** Per client: message events in the order the connector delivered them. */
  readonly seen = new Map<number, Seen[]>();
  /** Per client: the seq it was logged in at (events after it must all arrive). */
  readonly since = new Map<number, number>();
  readonly started = Date.now();

  invoke(operation: Omit<Operation, "invokeAt" | "outcome">): Operation {
    const recorded: Operation = { ...operation, invokeAt: Date.now() - this.started, outcome: "pending" };
    this.operations.push(recorded);
    return recorded;
  }

  complete(operation: Operation, outcome: Exclude<Outcome, "pending">, details: Partial<Operation> = {}): void {
    Object.assign(operation, details, { outcome, endAt: Date.now() - this.started });
  }

  observe(client: number, seen: Seen): void {
    let list = this.seen.get(client);
    if (!list) this.seen.set(client, (list = []));
    list.push(seen);
  }

  summary(): string {
    const count = (outcome: Outcome) => this.operations.filter((operation) => operation.outcome === outcome).length;
    return `${this.operations.length} operations: ${count("ok")} ok, ${count("fail")} failed, ${count("unknown")} unknown, ${count("pending")} pending`;
  }
}
