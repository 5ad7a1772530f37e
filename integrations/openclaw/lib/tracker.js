/**
 * Following OpenClaw runs from the two places a plugin sees them, to tell a run that really
 * failed on a limit from one attempt of a run that OpenClaw retries by itself.
 *
 * - `agent_end` fires once per attempt, with `success: true` even when the provider refused:
 *   the refusal is on the last assistant message (`stopReason: "error"`, `errorCode`,
 *   `errorType`, `errorMessage`). It carries the conversation, hence the user's message.
 * - Lifecycle agent events say how the run ended: `phase: "end"` (it finished, perhaps after
 *   OpenClaw's own retries) or `phase: "error"` (it failed; `errorObservation.failoverReason`
 *   says why). Each attempt's failure also shows as `phase: "finishing"` with an `error`.
 *
 * A run has failed on a limit when its lifecycle ends in `error` (or ends with
 * `stopReason: "error"`), it was not aborted, and its last attempt's error is a limit.
 */

import { classifyLimit, statusOf } from "./limits.js";
import { lastUserText } from "./record.js";

const MAX_RUNS = 1000;
const MAX_SEEN = 4000;

/**
 * @typedef {object} Terminal
 * @property {"ok" | "failed" | "aborted"} outcome
 * @property {string | null} error - OpenClaw's error text for a failed run.
 * @property {string | null} failoverReason - OpenClaw's classification of the failure.
 * @property {string | null} reply - the final reply's text, for a run that finished.
 */

/**
 * @typedef {object} RunInfo
 * @property {string} runId
 * @property {string | null} sessionKey
 * @property {string | null} agentId
 * @property {string | null} sessionId
 * @property {string | null} provider
 * @property {string | null} model
 * @property {string | null} userText - the last user message (from `agent_end`).
 * @property {object | null} attemptError - the last attempt's provider error (from `agent_end`).
 * @property {object | null} observation - the last attempt's failure (from lifecycle events).
 * @property {string[]} proxySessions - sessions `agentguard proxy` refused in this run's
 *   attempts, as its errors name them (one per model tried).
 * @property {Terminal | null} terminal
 */

// How `agentguard proxy` names a session it derived itself, in the error of a refusal.
const PROXY_SESSION = /for session '(proxy-[0-9a-f]{24})'/g;
const MAX_PROXY_SESSIONS = 16;

/**
 * Remember the `agentguard proxy` sessions an error names, so that the parked record hands
 * them to agentguard: they are resumed with this OpenClaw session.
 *
 * @param {RunInfo} info
 * @param {string} text
 */
export function noteProxySessions(info, text) {
  for (const match of text.matchAll(PROXY_SESSION)) {
    if (!info.proxySessions.includes(match[1]) && info.proxySessions.length < MAX_PROXY_SESSIONS) {
      info.proxySessions.push(match[1]);
    }
  }
}

/** Runs seen through `agent_end` and lifecycle events, and how each ended. */
export class RunTracker {
  constructor() {
    /** @type {Map<string, RunInfo>} */
    this.runs = new Map();
    this.seen = new Set();
    this.listeners = new Set();
  }

  /**
   * The record of a run, created on first sight (oldest runs are forgotten past 1000).
   *
   * @param {string} runId
   * @returns {RunInfo}
   */
  run(runId) {
    let info = this.runs.get(runId);
    if (!info) {
      info = {
        runId,
        sessionKey: null,
        agentId: null,
        sessionId: null,
        provider: null,
        model: null,
        userText: null,
        attemptError: null,
        proxySessions: [],
        observation: null,
        terminal: null,
      };
      this.runs.set(runId, info);
      if (this.runs.size > MAX_RUNS) this.runs.delete(this.runs.keys().next().value);
    }
    return info;
  }

  /**
   * True the first time `key` is seen: the same event can reach the plugin twice when OpenClaw
   * keeps more than one registration of it live.
   *
   * @param {string} key
   * @returns {boolean}
   */
  firstSight(key) {
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    if (this.seen.size > MAX_SEEN) this.seen.delete(this.seen.values().next().value);
    return true;
  }

  /**
   * Take in one `agent_end` (one attempt of a run).
   *
   * @param {{runId?: string, messages?: unknown[], success?: boolean, error?: string}} event
   * @param {{runId?: string, sessionKey?: string, agentId?: string, sessionId?: string,
   *   modelProviderId?: string, modelId?: string}} ctx
   * @returns {RunInfo | null} the run, or null when the event names none or was seen already.
   */
  noteAgentEnd(event, ctx = {}) {
    const runId = ctx?.runId ?? event?.runId;
    if (!runId) return null;
    const messages = Array.isArray(event?.messages) ? event.messages : [];
    const last = messages.at(-1);
    const stamp = last && typeof last === "object" ? (last.timestamp ?? "") : "";
    if (!this.firstSight(`end:${runId}:${messages.length}:${stamp}`)) return null;
    const info = this.run(runId);
    info.sessionKey = ctx?.sessionKey ?? info.sessionKey;
    info.agentId = ctx?.agentId ?? info.agentId;
    info.sessionId = ctx?.sessionId ?? info.sessionId;
    info.userText = lastUserText(messages) ?? info.userText;
    const assistant = last && typeof last === "object" && last.role === "assistant" ? last : null;
    info.provider = assistant?.provider ?? ctx?.modelProviderId ?? info.provider;
    info.model = assistant?.model ?? ctx?.modelId ?? info.model;
    if (assistant?.stopReason === "error") {
      info.attemptError = {
        status: statusOf(assistant.errorCode, assistant.errorMessage),
        errorType: typeof assistant.errorType === "string" ? assistant.errorType : null,
        errorCode:
          assistant.errorCode === undefined || assistant.errorCode === null
            ? null
            : String(assistant.errorCode),
        message: String(assistant.errorMessage ?? event?.error ?? ""),
      };
      noteProxySessions(info, info.attemptError.message);
    } else if (event?.success === false && event?.error) {
      info.attemptError = {
        status: statusOf(null, event.error),
        errorType: null,
        errorCode: null,
        message: String(event.error),
      };
      noteProxySessions(info, info.attemptError.message);
    } else {
      info.attemptError = null;
    }
    return info;
  }

  /**
   * Take in one agent event; lifecycle events that end a run are reported to the listeners.
   *
   * @param {{runId?: string, seq?: number, stream?: string, sessionKey?: string,
   *   agentId?: string, sessionId?: string, data?: Record<string, any>}} event
   * @returns {RunInfo | null} the run when this event ended it, else null.
   */
  noteAgentEvent(event) {
    if (!event || event.stream !== "lifecycle" || !event.runId) return null;
    const data = event.data ?? {};
    const phase = data.phase;
    if (
      !this.firstSight(`event:${event.runId}:${event.seq ?? ""}:${phase}:${data.endedAt ?? ""}`)
    ) {
      return null;
    }
    const info = this.run(event.runId);
    info.sessionKey = event.sessionKey ?? info.sessionKey;
    info.agentId = event.agentId ?? info.agentId;
    info.sessionId = event.sessionId ?? info.sessionId;
    const observation = data.errorObservation ?? {};
    if (phase === "model" && data.model) {
      info.provider = data.provider ?? info.provider;
      info.model = data.model;
    } else if (phase === "finishing" && data.error) {
      info.observation = {
        message: String(data.error),
        failoverReason: observation.failoverReason ?? null,
        model: observation.model ?? null,
        provider: observation.provider ?? null,
      };
      noteProxySessions(info, info.observation.message);
    }
    if (phase !== "end" && phase !== "error") return null;
    if (info.terminal) return null;
    let outcome = "ok";
    if (data.aborted === true) outcome = "aborted";
    else if (phase === "error" || data.stopReason === "error") outcome = "failed";
    if (data.error) noteProxySessions(info, String(data.error));
    info.terminal = {
      outcome,
      error: data.error ? String(data.error) : null,
      failoverReason: observation.failoverReason ?? info.observation?.failoverReason ?? null,
      reply: typeof data.terminalReply?.text === "string" ? data.terminalReply.text : null,
    };
    for (const listener of this.listeners) listener(info);
    return info;
  }

  /**
   * Call `listener(run)` whenever a run ends.
   *
   * @param {(run: RunInfo) => void} listener
   * @returns {() => void} removes the listener.
   */
  onTerminal(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Wait for a run to end.
   *
   * @param {string} runId
   * @param {number} timeoutMs
   * @param {AbortSignal} [signal] - stops the wait early (it then resolves null).
   * @returns {Promise<RunInfo | null>} the run, or null on timeout or abort.
   */
  waitTerminal(runId, timeoutMs, signal) {
    const known = this.runs.get(runId);
    if (known?.terminal) return Promise.resolve(known);
    if (signal?.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      let timer = null;
      const finish = (value) => {
        clearTimeout(timer);
        remove();
        signal?.removeEventListener("abort", aborted);
        resolve(value);
      };
      const aborted = () => finish(null);
      const remove = this.onTerminal((info) => {
        if (info.runId === runId) finish(info);
      });
      timer = setTimeout(() => finish(null), timeoutMs);
      signal?.addEventListener("abort", aborted, { once: true });
    });
  }

  /**
   * The limit a failed run failed on, or null when it did not fail on a limit.
   *
   * @param {RunInfo} info
   * @returns {import("./limits.js").LimitVerdict | null}
   */
  limitOf(info) {
    if (!info?.terminal || info.terminal.outcome !== "failed") return null;
    const attempt = info.attemptError;
    const failoverReason = info.terminal.failoverReason ?? info.observation?.failoverReason ?? null;
    // The provider's own error, from agent_end, says the most (LiteLLM's 422 budget refusal
    // reads to OpenClaw as a "format" failure).
    if (attempt) return classifyLimit({ ...attempt, failoverReason });
    // Without agent_end (no conversation access), OpenClaw's own text and verdict remain.
    const message = info.observation?.message ?? info.terminal.error ?? "";
    return classifyLimit({ status: statusOf(null, message), message, failoverReason });
  }
}
