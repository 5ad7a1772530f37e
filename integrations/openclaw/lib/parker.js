/**
 * Parking: when a run really failed on a limit, drop its record in `parkingDir/inbox/`, where
 * agentguard's daemon ingests it.
 */

import path from "node:path";

import { ensurePrivateDir, writePrivateJson } from "./files.js";
import { buildParkedRecord } from "./record.js";

const MAX_REMEMBERED = 2000;

/** Decides which ended runs to park, and writes their records. */
export class Parker {
  /**
   * @param {object} options
   * @param {() => import("./config.js").PluginConfig} options.config - the current config.
   * @param {() => {info: Function, warn: Function, error: Function}} options.logger - the
   *   current logger.
   * @param {import("./tracker.js").RunTracker} options.tracker - where runs are followed.
   * @param {() => Date} [options.now] - the clock.
   */
  constructor({ config, logger, tracker, now = () => new Date() }) {
    this.config = config;
    this.logger = logger;
    this.tracker = tracker;
    this.now = now;
    /** Runs already parked: a failed run is written once, however often its end is seen. */
    this.parkedRuns = new Set();
    /** Runs started by resume tickets: their outcome goes in an ack, never in the inbox. */
    this.ticketRuns = new Set();
    /** Sessions with a resume ticket being worked on, by session key. */
    this.ticketSessions = new Map();
  }

  /**
   * Mark a session as being resumed by a ticket (and the run that resumes it, once known).
   *
   * @param {string} sessionKey
   * @param {string} ticketId
   */
  claimSession(sessionKey, ticketId) {
    this.ticketSessions.set(sessionKey, (this.ticketSessions.get(sessionKey) ?? 0) + 1);
    this.claimRun(ticketId);
  }

  /**
   * Note the run a ticket started (normally the ticket id itself, its idempotency key).
   *
   * @param {string} runId
   */
  claimRun(runId) {
    this.ticketRuns.add(runId);
    if (this.ticketRuns.size > MAX_REMEMBERED) {
      this.ticketRuns.delete(this.ticketRuns.values().next().value);
    }
  }

  /**
   * The ticket for `sessionKey` is answered: failures of the session park normally again.
   *
   * @param {string} sessionKey
   */
  releaseSession(sessionKey) {
    const count = (this.ticketSessions.get(sessionKey) ?? 1) - 1;
    if (count > 0) this.ticketSessions.set(sessionKey, count);
    else this.ticketSessions.delete(sessionKey);
  }

  /**
   * Park `run` if it failed on a limit and nothing else answers for it.
   *
   * @param {import("./tracker.js").RunInfo} run - a run that has ended.
   * @returns {string | null} the inbox file written, or null.
   */
  consider(run) {
    if (!run?.terminal || run.terminal.outcome !== "failed" || !run.sessionKey) return null;
    // A resumed run that fails again is answered `rate_limited` in its ack (agentguard parks it
    // again, attempts + 1); a second record from the inbox would count that failure twice.
    if (this.ticketRuns.has(run.runId) || this.ticketSessions.has(run.sessionKey)) return null;
    if (this.parkedRuns.has(run.runId)) return null;
    const verdict = this.tracker.limitOf(run);
    if (!verdict) return null;
    this.parkedRuns.add(run.runId);
    if (this.parkedRuns.size > MAX_REMEMBERED) {
      this.parkedRuns.delete(this.parkedRuns.values().next().value);
    }
    const config = this.config();
    const record = buildParkedRecord(run, verdict, config, this.now());
    const inbox = ensurePrivateDir(path.join(config.parkingDir, "inbox"));
    // One file per session: a later failure of the same session replaces one not yet ingested,
    // so agentguard resumes with the latest message.
    const file = writePrivateJson(inbox, `${record.session_id}.json`, record);
    const logger = this.logger();
    if (record.state === "failed") {
      logger.warn(
        `agentguard: session ${run.sessionKey} ran out of quota ` +
          `(${verdict.message.slice(0, 200)}); ` +
          `recorded as failed in ${file}: a person must act`,
      );
    } else {
      logger.info(
        `agentguard: parked session ${run.sessionKey} (run ${run.runId}, ${verdict.kind}) ` +
          `until ${record.resume_at} (${record.reason.reset_source}); record ${file}`,
      );
    }
    if (!run.userText && !config.continueMessage) {
      logger.warn(
        "agentguard: the failed run's messages were not visible, so it resumes with " +
          '"Continue."; set plugins.entries.agentguard.hooks.allowConversationAccess: true',
      );
    }
    return file;
  }
}
