// Seeded fault schedules: kill -9, freeze (SIGSTOP/SIGCONT), restart, and full-cluster restarts,
// never more than `downMax` servers down (killed or frozen) at once. The same seed always yields
// the same schedule, so `npm run fault -- --seed S` replays it.
import { seededRandom } from "../../utils.js";

export type FaultStep =
  | { at: number; kind: "kill"; server: number }
  | { at: number; kind: "pause"; server: number; forMs: number }
  | { at: number; kind: "restart"; server: number }
  | { at: number; kind: "full-restart"; signal: "SIGTERM" | "SIGKILL"; order: number[] };

export type ScheduleOptions = { servers: number; durationMs: number; downMax: number; fullRestartChance: number };

export function makeSchedule(seed: number, options: ScheduleOptions): FaultStep[] {
  const random = seededRandom(seed);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)];
  const ids = Array.from({ length: options.servers }, (_, i) => i + 1);
  const down = new Set<number>();
  const pausedUntil = new Map<number, number>();
  const steps: FaultStep[] = [];
  let at = 500 + Math.floor(random() * 1000);
  while (at < options.durationMs) {
    for (const [server, until] of pausedUntil) if (until <= at) pausedUntil.delete(server);
    const unavailable = new Set([...down, ...pausedUntil.keys()]);
    const up = ids.filter((id) => !unavailable.has(id));
    const roll = random();
    if (roll < options.fullRestartChance && pausedUntil.size === 0) {
      const order = [...ids].sort(() => random() - 0.5);
      steps.push({ at, kind: "full-restart", signal: random() < 0.5 ? "SIGTERM" : "SIGKILL", order });
      down.clear();
    } else if (down.size > 0 && (roll < 0.45 || unavailable.size >= options.downMax)) {
      const server = pick([...down]);
      steps.push({ at, kind: "restart", server });
      down.delete(server);
    } else if (unavailable.size < options.downMax && up.length > 1) {
      const server = pick(up);
      if (random() < 0.6) {
        steps.push({ at, kind: "kill", server });
        down.add(server);
      } else {
        const forMs = 300 + Math.floor(random() * 1500);
        steps.push({ at, kind: "pause", server, forMs });
        pausedUntil.set(server, at + forMs);
      }
    }
    at += 400 + Math.floor(random() * 1400);
  }
  return steps;
}

export function describeStep(step: FaultStep): string {
  switch (step.kind) {
    case "kill":
      return `+${step.at}ms kill -9 server ${step.server}`;
    case "pause":
      return `+${step.at}ms freeze server ${step.server} for ${step.forMs}ms`;
    case "restart":
      return `+${step.at}ms restart server ${step.server}`;
    case "full-restart":
      return `+${step.at}ms full restart (${step.signal}), then start ${step.order.join(",")}`;
  }
}
