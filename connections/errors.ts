// Stable error codes. The wire carries the code; clients and tests branch on it, never on message text.
// docs/protocol.md lists each code with what a client should do about it.

export const errorCodes = {
  // request could not be understood
  BAD_JSON: "CHAT_ERR_BAD_JSON",
  BAD_REQUEST: "CHAT_ERR_BAD_REQUEST",
  UNKNOWN_TYPE: "CHAT_ERR_UNKNOWN_TYPE",
  UNSUPPORTED_VERSION: "CHAT_ERR_UNSUPPORTED_VERSION",
  FRAME_TOO_LARGE: "CHAT_ERR_FRAME_TOO_LARGE",
  // identity and permission
  NOT_LOGGED_IN: "CHAT_ERR_NOT_LOGGED_IN",
  BAD_CREDENTIALS: "CHAT_ERR_BAD_CREDENTIALS",
  BAD_SESSION: "CHAT_ERR_BAD_SESSION",
  ALREADY_LOGGED_IN: "CHAT_ERR_ALREADY_LOGGED_IN",
  FORBIDDEN: "CHAT_ERR_FORBIDDEN",
  TOO_MANY_ATTEMPTS: "CHAT_ERR_TOO_MANY_ATTEMPTS",
  // the thing named does not exist or is in the wrong state
  NAME_TAKEN: "CHAT_ERR_NAME_TAKEN",
  UNKNOWN_USER: "CHAT_ERR_UNKNOWN_USER",
  UNKNOWN_CHANNEL: "CHAT_ERR_UNKNOWN_CHANNEL",
  UNKNOWN_MESSAGE: "CHAT_ERR_UNKNOWN_MESSAGE",
  CHANNEL_EXISTS: "CHAT_ERR_CHANNEL_EXISTS",
  ALREADY_MEMBER: "CHAT_ERR_ALREADY_MEMBER",
  NOT_MEMBER: "CHAT_ERR_NOT_MEMBER",
  // cluster
  NOT_PRIMARY: "CHAT_ERR_NOT_PRIMARY",
  UNAVAILABLE: "CHAT_ERR_UNAVAILABLE",
  OVERLOADED: "CHAT_ERR_OVERLOADED",
  INTERNAL: "CHAT_ERR_INTERNAL",
  // client side only (ClientConnector)
  TIMEOUT: "CHAT_ERR_TIMEOUT",
  OUTCOME_UNKNOWN: "CHAT_ERR_OUTCOME_UNKNOWN",
  CLOSED: "CHAT_ERR_CLOSED",
  BAD_RESPONSE: "CHAT_ERR_BAD_RESPONSE",
} as const;

export type ErrorCode = (typeof errorCodes)[keyof typeof errorCodes];

/** Base class of every Chat+ error. */
export class ChatError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = "ChatError";
  }
}

/** The server answered the request with an error response. */
export class ServerError extends ChatError {
  readonly primary?: { id: number; host: string; clientPort: number };
  /** For CHAT_ERR_TOO_MANY_ATTEMPTS: how long to wait before the next password check of that account. */
  readonly retryAfterMs?: number;
  constructor(code: ErrorCode, message: string, primary?: { id: number; host: string; clientPort: number }, retryAfterMs?: number) {
    super(code, message);
    this.name = "ServerError";
    this.primary = primary;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Server side: too many wrong passwords for one account lately (connections/password-throttle.ts). */
export class TooManyAttemptsError extends ChatError {
  constructor(readonly retryAfterMs: number) {
    super(errorCodes.TOO_MANY_ATTEMPTS, `too many wrong passwords for this account: try again in ${Math.ceil(retryAfterMs / 1000)} s`);
    this.name = "TooManyAttemptsError";
  }
}

/** No server could be reached within the retry budget; the request was certainly not applied (it was never sent, or it was a read). */
export class UnavailableError extends ChatError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(errorCodes.UNAVAILABLE, message, options);
    this.name = "UnavailableError";
  }
}

/** A write was sent but no answer came back within the retry budget: it may or may not have been applied (at most once). */
export class OutcomeUnknownError extends ChatError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(errorCodes.OUTCOME_UNKNOWN, message, options);
    this.name = "OutcomeUnknownError";
  }
}

/** The connector was closed by its owner. */
export class ClosedError extends ChatError {
  constructor() {
    super(errorCodes.CLOSED, "connector closed");
    this.name = "ClosedError";
  }
}

/** A programmer error: an invariant did not hold. Crash rather than corrupt data. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}
