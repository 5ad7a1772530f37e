/**
 * Telling limit errors apart, and reading when a limit resets from an error's text.
 *
 * The kinds match agentguard's (`agentguard/parking/classify.py`):
 * - `rate_limit`: a short provider limit (requests or tokens per minute);
 * - `budget_window`: a dollar budget window is spent (a gateway key's budget, a usage window);
 * - `quota_exhausted`: the account is out of credit; waiting does not help, a person must act.
 *
 * OpenClaw hands a plugin the provider's error as text on the last assistant message
 * (`errorMessage`, `errorCode`, `errorType`) and, on lifecycle events, its own verdict
 * (`failoverReason`). Gateways do not all answer 429 (LiteLLM's proxy answers a key budget with
 * 422 and `type: "budget_exceeded"`), so the rules look at the type, code and text as well as
 * the status. Rules are tried in order; the first match wins.
 */

/** A case-insensitive regular expression matching any of `patterns`. */
const anyOf = (patterns, flags = "i") => new RegExp(patterns.join("|"), flags);

const QUOTA_CODES = new Set(["insufficient_quota"]);
const QUOTA_TEXT = anyOf([
  "exceeded your current quota",
  "check your plan and billing",
  "insufficient[_ ]quota",
  "insufficient credits",
  "payment required",
]);
const BUDGET_CODES = new Set(["budget_exceeded"]);
const BUDGET_TEXT = anyOf([
  "budget (?:has been )?exceeded",
  "exceeded (?:the |your )?budget",
  "crossed budget",
  "out of budget",
  "spend(?:ing)? limit",
  "usage limit",
  "(?:daily|weekly|monthly) (?:usage )?limit",
]);
const RATE_CODES = new Set(["rate_limit_exceeded", "rate_limit_error", "throttling_error", "429"]);
const RATE_TEXT = anyOf([
  "rate[ _-]?limit",
  "too many requests",
  "throttl",
  "resource[_ -]?exhausted",
  "quota[_ -]?exceeded",
]);

/**
 * The HTTP status an OpenClaw error carries: a numeric `errorCode` ("429", "422"), else the number
 * OpenClaw puts in front of the provider's message ("429 Budget exceeded ...").
 *
 * @param {unknown} errorCode - the assistant message's `errorCode`.
 * @param {unknown} message - the assistant message's `errorMessage`.
 * @returns {number | null} the status, or null when neither says.
 */
export function statusOf(errorCode, message) {
  if (typeof errorCode === "number" && errorCode >= 100 && errorCode < 600) return errorCode;
  if (typeof errorCode === "string" && /^[1-5]\d\d$/.test(errorCode.trim())) {
    return Number(errorCode.trim());
  }
  if (typeof message === "string") {
    const match = /^\s*([1-5]\d\d)\b/.exec(message);
    if (match) return Number(match[1]);
  }
  return null;
}

/**
 * @typedef {object} LimitVerdict
 * @property {"rate_limit" | "budget_window" | "quota_exhausted"} kind
 * @property {number | null} status - HTTP status, when known.
 * @property {string | null} errorType - the provider's error type (`budget_exceeded`...).
 * @property {string | null} errorCode - the provider's error code.
 * @property {string} message - the provider's error message.
 */

/**
 * Classify an error as a limit, or return null when it is not one.
 *
 * @param {object} error
 * @param {number | null} [error.status] - HTTP status.
 * @param {string | null} [error.errorType] - the provider's error type.
 * @param {string | null} [error.errorCode] - the provider's error code.
 * @param {string | null} [error.message] - the error text.
 * @param {string | null} [error.failoverReason] - OpenClaw's own classification.
 * @returns {LimitVerdict | null} what kind of limit it is.
 */
export function classifyLimit({
  status = null,
  errorType = null,
  errorCode = null,
  message = null,
  failoverReason = null,
} = {}) {
  const type = typeof errorType === "string" ? errorType.toLowerCase() : null;
  const code = typeof errorCode === "string" ? errorCode.toLowerCase() : null;
  const text = typeof message === "string" ? message : "";
  const verdict = (kind) => ({
    kind,
    status: status ?? (kind === "rate_limit" ? 429 : null),
    errorType: typeof errorType === "string" ? errorType : null,
    errorCode: typeof errorCode === "string" ? errorCode : null,
    message: text.slice(0, 2000),
  });
  if (QUOTA_CODES.has(type) || QUOTA_CODES.has(code) || QUOTA_TEXT.test(text)) {
    return verdict("quota_exhausted");
  }
  if (BUDGET_CODES.has(type) || BUDGET_CODES.has(code) || BUDGET_TEXT.test(text)) {
    return verdict("budget_window");
  }
  if (status === 429 || RATE_CODES.has(code) || (type && type.startsWith("rate_limit"))) {
    return verdict("rate_limit");
  }
  if (RATE_TEXT.test(text) || failoverReason === "rate_limit") return verdict("rate_limit");
  // OpenClaw files credit and payment refusals under "billing": waiting does not help those.
  if (failoverReason === "billing") return verdict("quota_exhausted");
  return null;
}

const UNIT_MS = [
  [/^(?:ms|msecs?|milliseconds?)$/i, 1],
  [/^(?:s|secs?|seconds?)$/i, 1000],
  [/^(?:m|mins?|minutes?)$/i, 60_000],
  [/^(?:h|hrs?|hours?)$/i, 3_600_000],
  [/^(?:d|days?)$/i, 86_400_000],
];
const UNIT =
  "(?:milliseconds?|msecs?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)(?![a-z])";
const DURATION_PART = new RegExp(`(\\d+(?:\\.\\d+)?)\\s*(${UNIT})`, "gi");
const RELATIVE = new RegExp(
  "(?:resets? in|try again in|retry in|available (?:again )?in|retry[- ]after)\\s*:?\\s*" +
    `((?:\\d+(?:\\.\\d+)?\\s*${UNIT}[\\s,]*(?:and\\s+)?)+|\\d+(?:\\.\\d+)?(?![\\d.]*\\s*[a-z]))`,
  "gi",
);
// "resets at 2026-11-25 07:32:16 UTC", "reset_at: 2026-11-25T10:00:00+02:00"...
const ABSOLUTE = new RegExp(
  "(?:resets?|reset_at|available(?: again)?)\\s*(?:at|on)?\\s*:?\\s*" +
    "(\\d{4}-\\d{2}-\\d{2}[T ]\\d{2}:\\d{2}(?::\\d{2}(?:\\.\\d+)?)?)" +
    "\\s*(UTC|GMT|Z|[+-]\\d{2}:?\\d{2})?",
  "gi",
);
// A reset further out than this is more likely a misread than a limit worth waiting for.
const MAX_WAIT_MS = 31 * 86_400_000;

/**
 * Milliseconds in a duration such as "88s", "6m0s", "1h30m", "29 seconds", "120ms" or a bare
 * number of seconds.
 *
 * @param {string} text
 * @returns {number | null}
 */
export function durationMs(text) {
  const trimmed = text.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  let total = 0;
  let found = false;
  for (const match of trimmed.matchAll(DURATION_PART)) {
    const unit = UNIT_MS.find(([pattern]) => pattern.test(match[2]));
    if (!unit) continue;
    total += Number(match[1]) * unit[1];
    found = true;
  }
  return found ? total : null;
}

/**
 * When a limit resets, as the error's text says ("resets in 88s", "Retry-After: 20 seconds",
 * "Please try again in 120ms", "Limit resets at: 2026-11-25 07:32:16 UTC"). When the text gives
 * several, the latest wins: resuming early only spends an attempt on another refusal.
 *
 * @param {string | null | undefined} message - the error text.
 * @param {Date} [now] - the current time.
 * @returns {Date | null} the reset time, or null when the text does not say.
 */
export function parseResetTime(message, now = new Date()) {
  if (typeof message !== "string" || !message) return null;
  let latest = null;
  const consider = (at) => {
    if (Number.isNaN(at.getTime())) return;
    if (at.getTime() - now.getTime() > MAX_WAIT_MS) return;
    if (latest === null || at > latest) latest = at;
  };
  for (const match of message.matchAll(RELATIVE)) {
    const wait = durationMs(match[1]);
    if (wait !== null) consider(new Date(now.getTime() + wait));
  }
  for (const match of message.matchAll(ABSOLUTE)) {
    const zone = match[2] ? match[2].toUpperCase() : "Z";
    // A time without a zone is read as UTC, as the gateways that write one mean it.
    const offset =
      zone === "UTC" || zone === "GMT" ? "Z" : zone.replace(/^([+-]\d{2})(\d{2})$/, "$1:$2");
    consider(new Date(`${match[1].replace(" ", "T")}${offset}`));
  }
  if (latest !== null && latest < now) return new Date(now.getTime());
  return latest;
}
