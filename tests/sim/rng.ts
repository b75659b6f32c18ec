// Seeded randomness for the simulator. Every random choice of a run comes from one seed; independent
// streams (network, faults, each replica's jitter, each client) are forked from it so that a change in
// how often one part draws numbers does not shift the choices of the others.
import { seededRandom } from "../../utils.js";

/** Mixes two 32-bit values into one (a murmur3-style finalizer). */
export function mixSeed(a: number, b: number): number {
  let h = Math.imul((a ^ 0x9e3779b9) >>> 0, 0x85ebca6b) ^ Math.imul((b + 0x632be5ab) >>> 0, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

export class Rng {
  readonly next: () => number;

  constructor(readonly seed: number) {
    this.next = seededRandom(seed);
  }

  /** An independent stream for one part of the simulation. */
  fork(label: number): Rng {
    return new Rng(mixSeed(this.seed, label));
  }

  /** Integer in [low, high], both included. */
  int(low: number, high: number): number {
    return low + Math.floor(this.next() * (high - low + 1));
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[Math.floor(this.next() * items.length)];
  }
}
