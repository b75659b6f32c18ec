// The password throttle's rules, on the I/O-free class with a hand-driven clock. The server-level
// behaviour (codes, retryAfterMs, unknown names, parallel guesses) is in chat-accounts.test.ts.
import { describe, expect, it } from "vitest";
import { PasswordThrottle, type ThrottleLimits } from "../connections/password-throttle.js";

const limits: ThrottleLimits = { freeFailures: 3, firstDelayMs: 100, delayMaxMs: 1000, forgetAfterMs: 10_000, accountsMax: 4, busyRetryMs: 25 };

/** One whole check at time `now`: returns the verdict, and ends an allowed check with `outcome`. */
function attempt(throttle: PasswordThrottle, key: string, now: number, outcome: "right" | "wrong" | "none" = "wrong") {
  const verdict = throttle.begin(key, now);
  if (verdict.allowed) throttle.finish(key, outcome, now);
  return verdict;
}

describe("PasswordThrottle", () => {
  it("allows freeFailures wrong checks, then waits firstDelayMs, doubling per failure up to delayMaxMs", () => {
    const throttle = new PasswordThrottle(limits);
    for (let i = 0; i < 3; i += 1) expect(attempt(throttle, "a", 0)).toEqual({ allowed: true });
    expect(attempt(throttle, "a", 0)).toEqual({ allowed: false, retryAfterMs: 100 });
    expect(attempt(throttle, "a", 60)).toEqual({ allowed: false, retryAfterMs: 40 });
    // Each allowed failure sets the next wait: 100 (after the 3rd), then 200, 400, 800, 1000, 1000.
    let now = 100;
    for (const wait of [200, 400, 800, 1000, 1000]) {
      expect(attempt(throttle, "a", now)).toEqual({ allowed: true });
      expect(attempt(throttle, "a", now + wait - 1)).toEqual({ allowed: false, retryAfterMs: 1 });
      now += wait;
    }
  });

  it("a right password clears the count; a check that ended without an answer counts for nothing", () => {
    const throttle = new PasswordThrottle(limits);
    attempt(throttle, "a", 0);
    attempt(throttle, "a", 0);
    attempt(throttle, "a", 0, "none");
    expect(attempt(throttle, "a", 0)).toEqual({ allowed: true }); // the third failure
    expect(attempt(throttle, "a", 100, "right")).toEqual({ allowed: true });
    expect(throttle.size).toBe(0);
    for (let i = 0; i < 3; i += 1) expect(attempt(throttle, "a", 100)).toEqual({ allowed: true });
    expect(attempt(throttle, "a", 100).allowed).toBe(false);
  });

  it("checks running at once count as failures until they end", () => {
    const throttle = new PasswordThrottle(limits);
    attempt(throttle, "a", 0);
    expect(throttle.begin("a", 0)).toEqual({ allowed: true });
    expect(throttle.begin("a", 0)).toEqual({ allowed: true });
    // One failure and two checks running make three: a fourth must wait for them.
    expect(throttle.begin("a", 0)).toEqual({ allowed: false, retryAfterMs: 25 });
    throttle.finish("a", "wrong", 5);
    expect(throttle.begin("a", 5)).toEqual({ allowed: false, retryAfterMs: 25 });
    throttle.finish("a", "wrong", 10);
    // Three failures now, and none running: the delay.
    expect(throttle.begin("a", 10)).toEqual({ allowed: false, retryAfterMs: 100 });
  });

  it("forgets an account after forgetAfterMs without checks, and holds at most accountsMax idle accounts", () => {
    const throttle = new PasswordThrottle(limits);
    for (let i = 0; i < 4; i += 1) attempt(throttle, "a", 0);
    expect(attempt(throttle, "a", 9_999).allowed).toBe(true); // the wait (100) is over; a 5th failure
    expect(attempt(throttle, "a", 10_000).allowed).toBe(false); // its 200 ms wait runs
    expect(attempt(throttle, "a", 20_000)).toEqual({ allowed: true }); // forgotten: counts from zero
    for (const key of ["b", "c", "d", "e"]) attempt(throttle, key, 20_000);
    expect(throttle.size).toBe(4);
    // "a" was checked least recently, so it went first: it counts from zero again.
    for (let i = 0; i < 3; i += 1) expect(attempt(throttle, "a", 20_000).allowed).toBe(true);
  });
});
