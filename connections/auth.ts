// Password hashing and session tokens.
// Passwords: scrypt with a per-account random salt; only salt and hash are stored (and logged, as
// the values the primary chose). Tokens: "<sessionId>.<HMAC(clusterSecret, sessionId)>", so the
// replicated database holds session ids but a token cannot be forged from it without the secret.
import { createHmac, randomBytes, scrypt, timingSafeEqual } from "node:crypto";
import { passwordChecksConcurrentMax, passwordChecksQueuedMax, saltBytes, scryptCost, scryptKeyBytes, sessionTokenBytes } from "./consts.js";
import { ChatError, errorCodes } from "./errors.js";

/** scrypt runs in progress, and the ones waiting for a slot (each is handed the slot of one that ends). */
let passwordChecksRunning = 0;
const passwordChecksWaiting: (() => void)[] = [];

async function scryptAsync(password: string, salt: Buffer): Promise<Buffer> {
  if (passwordChecksRunning < passwordChecksConcurrentMax) passwordChecksRunning += 1;
  else {
    if (passwordChecksWaiting.length >= passwordChecksQueuedMax) throw new ChatError(errorCodes.OVERLOADED, "too many password checks waiting on this server; retry shortly");
    await new Promise<void>((resolve) => passwordChecksWaiting.push(resolve));
  }
  try {
    return await new Promise<Buffer>((resolve, reject) =>
      scrypt(password, salt, scryptKeyBytes, { N: scryptCost, r: 8, p: 1, maxmem: 64 * 1024 * 1024 }, (error, key) => (error ? reject(error) : resolve(key))),
    );
  } finally {
    const next = passwordChecksWaiting.shift();
    if (next) next();
    else passwordChecksRunning -= 1;
  }
}

export async function hashPassword(password: string): Promise<{ salt: string; hash: string }> {
  const salt = randomBytes(saltBytes);
  const hash = await scryptAsync(password, salt);
  return { salt: salt.toString("hex"), hash: hash.toString("hex") };
}

export async function verifyPassword(password: string, salt: string, hash: string): Promise<boolean> {
  const expected = Buffer.from(hash, "hex");
  const actual = await scryptAsync(password, Buffer.from(salt, "hex"));
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

/** A dummy verification so an unknown username takes as long as a wrong password. */
export async function burnPasswordCheck(password: string): Promise<void> {
  await scryptAsync(password, Buffer.alloc(saltBytes));
}

export function newSessionId(): string {
  return randomBytes(sessionTokenBytes).toString("base64url");
}

export function tokenFor(sessionId: string, secret: string): string {
  return `${sessionId}.${createHmac("sha256", secret).update(`session|${sessionId}`).digest("base64url")}`;
}

/** The session id inside a token, or undefined when the token was not made with this secret. */
export function sessionIdFromToken(token: string, secret: string): string | undefined {
  const dot = token.indexOf(".");
  if (dot <= 0) return undefined;
  const sessionId = token.slice(0, dot);
  const expected = Buffer.from(tokenFor(sessionId, secret));
  const actual = Buffer.from(token);
  return expected.length === actual.length && timingSafeEqual(expected, actual) ? sessionId : undefined;
}
