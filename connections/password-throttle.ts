// Slows password guessing against one account (docs/architecture.md §8).
//
// After `freeFailures` wrong passwords in a row, each further check of that account waits out a
// delay that doubles with every failure, up to a cap. An attempt inside the delay is refused at once,
// before any scrypt, with the time left. A right password clears the count. This is a delay, not a
// lockout: a lockout would let anyone lock a victim out for good. A session that already exists
// (`auth` with its token) is never throttled.
//
// Checks of one account that run at the same time count as failures until they end. Otherwise many
// connections could each start a check before the first wrong one was counted.
//
// In memory, per server, and free of I/O: the caller passes the monotonic time.
import { assert } from "./errors.js";

export type ThrottleLimits = {
  /** Wrong passwords in a row that cost nothing more than the wrong answer. */
  freeFailures: number;
  /** The wait after failure number freeFailures; it doubles with each failure after it. */
  firstDelayMs: number;
  delayMaxMs: number;
  /** An account with no check for this long starts from zero again. */
  forgetAfterMs: number;
  /** Accounts tracked at most; past it the least recently checked one is forgotten. */
  accountsMax: number;
  /** The wait suggested to an attempt refused because another check of the account is running. */
  busyRetryMs: number;
};

export type ThrottleVerdict = { allowed: true } | { allowed: false; retryAfterMs: number };

type AccountState = { failures: number; running: number; notBeforeMs: number; lastCheckMs: number };

export class PasswordThrottle {
  /** Least recently checked first: every check moves its account to the end. */
  private readonly accounts = new Map<string, AccountState>();

  constructor(private readonly limits: ThrottleLimits) {
    assert(limits.freeFailures >= 1 && limits.firstDelayMs > 0 && limits.delayMaxMs >= limits.firstDelayMs, "throttle limits are sane");
    assert(limits.accountsMax >= 1 && limits.busyRetryMs > 0 && limits.forgetAfterMs > limits.delayMaxMs, "throttle bounds are sane");
  }

  /** Accounts tracked now (for tests and bounds). */
  get size(): number {
    return this.accounts.size;
  }

  /**
   * Asks to check a password of account `key`. When allowed, the caller must call `finish` with the
   * outcome once the check ends, whatever happens.
   */
  begin(key: string, nowMs: number): ThrottleVerdict {
    let state = this.accounts.get(key);
    if (state && state.running === 0 && nowMs - state.lastCheckMs >= this.limits.forgetAfterMs) state = undefined;
    state ??= { failures: 0, running: 0, notBeforeMs: 0, lastCheckMs: nowMs };
    if (state.failures + state.running >= this.limits.freeFailures) {
      if (state.running > 0) return { allowed: false, retryAfterMs: Math.max(this.limits.busyRetryMs, state.notBeforeMs - nowMs) };
      if (nowMs < state.notBeforeMs) return { allowed: false, retryAfterMs: state.notBeforeMs - nowMs };
    }
    state.running += 1;
    state.lastCheckMs = nowMs;
    this.touch(key, state);
    return { allowed: true };
  }

  /**
   * The check that `begin` allowed has ended: the password was right, wrong, or not checked at all
   * ("none": the check failed for another reason, such as a full password-check queue).
   */
  finish(key: string, outcome: "right" | "wrong" | "none", nowMs: number): void {
    const state = this.accounts.get(key);
    assert(state && state.running > 0, `a password check of ${JSON.stringify(key)} is running`);
    state.running -= 1;
    state.lastCheckMs = nowMs;
    if (outcome === "none") {
      if (state.running === 0 && state.failures === 0) this.accounts.delete(key);
      return;
    }
    if (outcome === "right") {
      state.failures = 0;
      state.notBeforeMs = 0;
      if (state.running === 0) this.accounts.delete(key);
      return;
    }
    state.failures += 1;
    const beyond = state.failures - this.limits.freeFailures;
    // 2 ** beyond stays finite long before the cap: failures are bounded by the delays themselves.
    if (beyond >= 0) state.notBeforeMs = nowMs + Math.min(this.limits.delayMaxMs, this.limits.firstDelayMs * 2 ** Math.min(beyond, 30));
    this.touch(key, state);
  }

  private touch(key: string, state: AccountState): void {
    this.accounts.delete(key);
    this.accounts.set(key, state);
    if (this.accounts.size <= this.limits.accountsMax) return;
    // Forget the least recently checked account with no check running. Running checks are bounded
    // by the password-check queue, so this walk is short.
    for (const [oldKey, oldState] of this.accounts) {
      if (oldState.running === 0) {
        this.accounts.delete(oldKey);
        return;
      }
    }
  }
}
