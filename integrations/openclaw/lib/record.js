/**
 * The parked-session record the plugin drops in agentguard's inbox (agentguard's JSON Schema:
 * `agentguard parked schema`), and the pieces it is built from.
 */

import { createHash } from "node:crypto";

import { parseResetTime } from "./limits.js";

export const SCHEMA_VERSION = 1;
const UNSAFE = /[^A-Za-z0-9._:@-]/g;
const MAX_ID = 200;
// Long enough that a user's message survives, short of agentguard's 8 MiB inbox limit.
const MAX_TEXT = 200_000;

/**
 * The agentguard session id for an OpenClaw session key: characters other than
 * `A-Z a-z 0-9 . _ : @ -` become `_`; a key longer than 200 characters is cut and ends with a
 * hash of the whole key, so two long keys never share an id.
 *
 * @param {string} sessionKey - the OpenClaw session key (`agent:main:telegram:direct:123`).
 * @returns {string} a valid agentguard session id.
 */
export function safeSessionId(sessionKey) {
  const key = String(sessionKey ?? "");
  let id = key.replace(UNSAFE, "_");
  if (id.length > MAX_ID) {
    const digest = createHash("sha256").update(key).digest("hex").slice(0, 16);
    id = `${id.slice(0, MAX_ID - digest.length - 1)}-${digest}`;
  }
  // Ids name files: never empty, never "." or "..".
  if (id === "" || id === "." || id === "..") id = `openclaw_${id.replace(/\./g, "_")}`;
  return id;
}

/**
 * The text of a chat message's content: a string, or the text parts of a content array.
 *
 * @param {unknown} content
 * @returns {string}
 */
export function contentText(content) {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((part) => part && typeof part === "object" && typeof part.text === "string")
    .map((part) => part.text)
    .join("\n");
}

/**
 * The text of the last user message in a transcript, or null if there is none.
 *
 * @param {unknown[]} messages - `agent_end`'s `messages`.
 * @returns {string | null}
 */
export function lastUserText(messages) {
  if (!Array.isArray(messages)) return null;
  for (let index = messages.length - 1; index >= 0; index -= 1) {
    const message = messages[index];
    if (message && typeof message === "object" && message.role === "user") {
      const text = contentText(message.content).trim();
      if (text) return text.slice(0, MAX_TEXT);
    }
  }
  return null;
}

/**
 * ISO 8601 in UTC, as agentguard reads it.
 *
 * @param {Date} date
 * @returns {string}
 */
export function isoUtc(date) {
  return date.toISOString();
}

/**
 * @typedef {object} FailedRun
 * @property {string} sessionKey - OpenClaw's session key.
 * @property {string | null} runId - the failed run.
 * @property {string | null} agentId - the OpenClaw agent.
 * @property {string | null} sessionId - OpenClaw's session id (its transcript).
 * @property {string | null} provider - the provider the last attempt went to.
 * @property {string | null} model - the model the last attempt asked for.
 * @property {string | null} userText - the last user message, when the plugin could see it.
 * @property {string[]} [proxySessions] - sessions `agentguard proxy` refused in the run.
 */

/**
 * Build the parked record for a run that failed on a limit.
 *
 * `resume_at` comes from a reset time in the error's text if it gives one, else `windowHours`
 * from now. A `quota_exhausted` record is written `failed` with no `resume_at`: waiting does not
 * bring credit back, so agentguard lists it for a person and never resumes it.
 *
 * @param {FailedRun} run
 * @param {import("./limits.js").LimitVerdict} verdict
 * @param {import("./config.js").PluginConfig} config
 * @param {Date} [now]
 * @returns {Record<string, unknown>} the record, ready for `JSON.stringify`.
 */
export function buildParkedRecord(run, verdict, config, now = new Date()) {
  const message = (config.continueMessage ?? run.userText ?? "Continue.").slice(0, MAX_TEXT);
  const userText = run.userText ?? message;
  const failed = verdict.kind === "quota_exhausted";
  const reset = failed ? null : parseResetTime(verdict.message, now);
  const resumeAt = failed
    ? null
    : (reset ?? new Date(now.getTime() + config.windowHours * 3_600_000));
  const resetSource = failed ? null : reset ? "message" : "plugin.windowHours";
  const reason = {
    kind: verdict.kind,
    status: verdict.status ?? null,
    error_type: verdict.errorType ?? null,
    error_code: verdict.errorCode ?? null,
    message: verdict.message.slice(0, 2000),
    headers: {},
    reset_source: resetSource,
    budget_key: config.budgetKey,
  };
  const state = failed ? "failed" : "parked";
  return {
    schema_version: SCHEMA_VERSION,
    session_id: safeSessionId(run.sessionKey),
    budget_key: config.budgetKey,
    framework: "openclaw",
    resumer: "openclaw",
    request: {
      model: run.model ?? "unknown",
      messages: [{ role: "user", content: userText }],
    },
    metadata: {
      session_key: run.sessionKey,
      message,
      run_id: run.runId ?? null,
      agent_id: run.agentId ?? null,
      openclaw_session_id: run.sessionId ?? null,
      provider: run.provider ?? null,
      // agentguard marks these resumed too when this session is resumed.
      proxy_sessions: run.proxySessions ?? [],
    },
    reason,
    state,
    parked_at: isoUtc(now),
    resume_at: resumeAt ? isoUtc(resumeAt) : null,
    attempts: 0,
    history: [
      {
        at: isoUtc(now),
        state,
        note: failed
          ? `OpenClaw run ${run.runId ?? "?"} failed: quota exhausted; a person must act`
          : `OpenClaw run ${run.runId ?? "?"} failed on a ${verdict.kind}`,
      },
    ],
  };
}
