/**
 * Resuming: agentguard's daemon writes a resume ticket to `parkingDir/outbox/<ticket_id>.json`
 * when a parked session is due; this service continues the same OpenClaw session with it and
 * answers in `parkingDir/acks/<ticket_id>.json`:
 *
 * - `resumed`: the continued run finished;
 * - `rate_limited`: it hit a limit again (`resume_at` from the error's text, if it says);
 * - `error`: anything else (agentguard retries later, within its attempt cap).
 *
 * A ticket is run once. An ack already written means it was answered; a marker written before
 * the run starts (`parkingDir/openclaw-plugin/started/`) means it was started, so a restarted
 * plugin waits for that run's outcome instead of sending the message again. The ticket id is
 * also the run's idempotency key.
 */

import fs from "node:fs";
import path from "node:path";

import { ensurePrivateDir, listJson, readJson, removeFile, writePrivateJson } from "./files.js";
import { classifyLimit, parseResetTime, statusOf } from "./limits.js";
import { safeSessionId } from "./record.js";

export const TICKET_VERSION = 1;
const SAFE_TICKET_ID = /^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,299}$/;
// How long waitForRun may block per call; the loop re-checks the deadline in between.
const WAIT_SLICE_MS = 30_000;

/**
 * @typedef {object} Outcome
 * @property {"resumed" | "rate_limited" | "error"} status
 * @property {string} message - a short detail.
 * @property {string | null} resume_at - ISO time the limit resets, for `rate_limited`.
 * @property {string} [kind] - the kind of limit (`budget_window`...), for `rate_limited`.
 */

/**
 * The ack for a run that ended, from what the tracker saw of it.
 *
 * @param {import("./tracker.js").RunInfo} run
 * @param {import("./tracker.js").RunTracker} tracker
 * @param {Date} now
 * @returns {Outcome}
 */
export function outcomeOfRun(run, tracker, now) {
  const terminal = run.terminal;
  if (terminal.outcome === "ok") {
    const reply = terminal.reply ? `: ${terminal.reply.slice(0, 300)}` : "";
    return { status: "resumed", message: `run ${run.runId} finished${reply}`, resume_at: null };
  }
  if (terminal.outcome === "aborted") {
    return { status: "error", message: `run ${run.runId} was aborted`, resume_at: null };
  }
  const verdict = tracker.limitOf(run);
  if (verdict) {
    const reset = parseResetTime(verdict.message, now);
    return {
      status: "rate_limited",
      message: `${verdict.kind}: ${verdict.message}`.slice(0, 2000),
      resume_at: reset ? reset.toISOString() : null,
      kind: verdict.kind,
    };
  }
  return {
    status: "error",
    message: `run ${run.runId} failed: ${terminal.error ?? "unknown error"}`.slice(0, 2000),
    resume_at: null,
  };
}

/**
 * The ack for a run known only through `waitForRun` (the lifecycle events were not seen).
 *
 * @param {string} runId
 * @param {{status: string, error?: string, terminalReply?: {text?: string}}} wait
 * @param {Date} now
 * @returns {Outcome}
 */
export function outcomeOfWait(runId, wait, now) {
  if (wait.status === "ok") {
    const text = wait.terminalReply?.text;
    const reply = typeof text === "string" && text ? `: ${text.slice(0, 300)}` : "";
    return { status: "resumed", message: `run ${runId} finished${reply}`, resume_at: null };
  }
  const error = String(wait.error ?? "unknown error");
  const verdict = classifyLimit({ status: statusOf(null, error), message: error });
  if (verdict) {
    const reset = parseResetTime(error, now);
    return {
      status: "rate_limited",
      message: `${verdict.kind}: ${error}`.slice(0, 2000),
      resume_at: reset ? reset.toISOString() : null,
      kind: verdict.kind,
    };
  }
  return {
    status: "error",
    message: `run ${runId} failed: ${error}`.slice(0, 2000),
    resume_at: null,
  };
}

/** Watches the outbox and answers each resume ticket once. */
export class TicketService {
  /**
   * @param {object} options
   * @param {() => import("./config.js").PluginConfig} options.config - the current config.
   * @param {() => {info: Function, warn: Function, error: Function}} options.logger
   * @param {{subagent: {run: Function, waitForRun: Function}}} options.runtime - OpenClaw's
   *   `api.runtime`.
   * @param {import("./tracker.js").RunTracker} options.tracker
   * @param {import("./parker.js").Parker} options.parker
   * @param {() => Date} [options.now] - the clock.
   * @param {number} [options.settleMs] - how long to wait for a run's lifecycle events once
   *   `waitForRun` says it ended.
   */
  constructor({
    config,
    logger,
    runtime,
    tracker,
    parker,
    now = () => new Date(),
    settleMs = 1000,
  }) {
    this.config = config;
    this.logger = logger;
    this.runtime = runtime;
    this.tracker = tracker;
    this.parker = parker;
    this.now = now;
    this.settleMs = settleMs;
    this.inFlight = new Map();
    this.rejected = new Set();
    this.watcher = null;
    this.timer = null;
    this.stopped = true;
  }

  /** @returns {{outbox: string, acks: string, started: string}} the directories used. */
  directories() {
    const root = this.config().parkingDir;
    return {
      outbox: path.join(root, "outbox"),
      acks: path.join(root, "acks"),
      started: path.join(root, "openclaw-plugin", "started"),
    };
  }

  /** Start watching the outbox (fs.watch, and a scan every `pollIntervalMs`). */
  start() {
    this.stopped = false;
    const { outbox, acks, started } = this.directories();
    for (const directory of [outbox, acks, started]) ensurePrivateDir(directory);
    try {
      this.watcher = fs.watch(outbox, (_event, name) => {
        if (typeof name === "string" && name.endsWith(".json") && !name.startsWith(".")) {
          this.handle(name);
        }
      });
      this.watcher.on("error", (error) => {
        this.logger().warn(`agentguard: watching ${outbox} failed (${error}); polling only`);
        this.watcher?.close();
        this.watcher = null;
      });
    } catch (error) {
      // Some file systems cannot be watched; the poll below still finds every ticket.
      this.logger().warn(`agentguard: cannot watch ${outbox} (${error}); polling only`);
    }
    this.timer = setInterval(() => this.scan(), this.config().pollIntervalMs);
    this.timer.unref?.();
    this.scan();
    this.logger().info(`agentguard: watching ${outbox} for resume tickets`);
  }

  /** Stop watching. Tickets being run keep running; their answers are still written. */
  stop() {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * Look at every ticket in the outbox now.
   *
   * @returns {Promise<void>} settles when the tickets found are answered.
   */
  async scan() {
    let names;
    try {
      names = listJson(this.directories().outbox);
    } catch (error) {
      this.logger().warn(`agentguard: cannot read the outbox: ${error}`);
      return;
    }
    await Promise.all(names.map((name) => this.handle(name)));
  }

  /**
   * Answer the ticket `name` unless it is being answered already.
   *
   * @param {string} name - the ticket's file name (`<ticket_id>.json`).
   * @returns {Promise<void>}
   */
  handle(name) {
    const ticketId = name.slice(0, -".json".length);
    const running = this.inFlight.get(ticketId);
    if (running) return running;
    if (this.stopped) return Promise.resolve();
    if (!SAFE_TICKET_ID.test(ticketId)) {
      if (!this.rejected.has(name)) {
        this.rejected.add(name);
        this.logger().warn(
          `agentguard: ignoring outbox file ${JSON.stringify(name)}: not a ticket id`,
        );
      }
      return Promise.resolve();
    }
    const work = this.answer(ticketId)
      .catch((error) => {
        this.logger().error(`agentguard: ticket ${ticketId} failed: ${error?.stack ?? error}`);
      })
      .finally(() => this.inFlight.delete(ticketId));
    this.inFlight.set(ticketId, work);
    return work;
  }

  /**
   * Run one ticket and write its ack.
   *
   * @param {string} ticketId
   * @returns {Promise<void>}
   */
  async answer(ticketId) {
    const { outbox, acks, started } = this.directories();
    const ticketPath = path.join(outbox, `${ticketId}.json`);
    const ackPath = path.join(acks, `${ticketId}.json`);
    const markerPath = path.join(started, `${ticketId}.json`);
    if (fs.existsSync(ackPath)) {
      // Answered before a restart: the ticket must not run twice.
      removeFile(ticketPath);
      removeFile(markerPath);
      return;
    }
    let ticket;
    try {
      ticket = readJson(ticketPath);
    } catch (error) {
      if (error.code === "ENOENT") return;
      this.writeAck(ticketPath, ackPath, markerPath, ticketId, null, null, {
        status: "error",
        message: `unreadable ticket: ${error.message}`,
        resume_at: null,
      });
      return;
    }
    const problem = ticketProblem(ticket, ticketId);
    if (problem) {
      this.writeAck(ticketPath, ackPath, markerPath, ticketId, ticket, null, {
        status: "error",
        message: `invalid ticket: ${problem}`,
        resume_at: null,
      });
      return;
    }
    const config = this.config();
    if (ticket.attempt > config.maxAttempts) {
      this.writeAck(ticketPath, ackPath, markerPath, ticketId, ticket, null, {
        status: "error",
        message:
          `attempt ${ticket.attempt} is past the plugin's maxAttempts=${config.maxAttempts}; ` +
          "not sent",
        resume_at: null,
      });
      return;
    }
    const sessionKey = ticket.session_key;
    this.parker.claimSession(sessionKey, ticketId);
    try {
      const { runId, startedAt, failure } = await this.startRun(
        ticket,
        ticketId,
        markerPath,
        config,
      );
      if (failure) {
        this.writeAck(ticketPath, ackPath, markerPath, ticketId, ticket, null, failure);
        return;
      }
      const deadline = startedAt + config.resumeTimeoutSeconds * 1000;
      const outcome = await this.awaitOutcome(runId, deadline);
      this.writeAck(ticketPath, ackPath, markerPath, ticketId, ticket, runId, outcome);
    } finally {
      this.parker.releaseSession(sessionKey);
    }
  }

  /**
   * Start the run that continues the session, unless a marker says it was started before.
   *
   * @param {object} ticket - a valid ticket.
   * @param {string} ticketId
   * @param {string} markerPath - the ticket's started marker.
   * @param {import("./config.js").PluginConfig} config
   * @returns {Promise<{runId?: string, startedAt?: number, failure?: Outcome}>} the run and
   *   when it started, or why it could not start.
   */
  async startRun(ticket, ticketId, markerPath, config) {
    let marker = null;
    try {
      marker = readJson(markerPath);
    } catch {
      marker = null;
    }
    if (marker && typeof marker === "object") {
      const runId = typeof marker.run_id === "string" && marker.run_id ? marker.run_id : ticketId;
      this.parker.claimRun(runId);
      const startedAt = Date.parse(marker.started_at) || this.now().getTime();
      this.logger().info(
        `agentguard: ticket ${ticketId} was started before a restart; waiting for run ${runId}`,
      );
      return { runId, startedAt };
    }
    const startedAt = this.now().getTime();
    const write = (runId) =>
      writePrivateJson(path.dirname(markerPath), path.basename(markerPath), {
        ticket_id: ticketId,
        session_key: ticket.session_key,
        run_id: runId,
        started_at: new Date(startedAt).toISOString(),
      });
    // Written before the run starts: if the plugin dies in between, the message is not sent twice.
    write(null);
    let result;
    try {
      result = await this.runtime.subagent.run({
        sessionKey: ticket.session_key,
        message: ticket.message,
        idempotencyKey: ticketId,
        deliver: config.deliver,
      });
    } catch (error) {
      removeFile(markerPath);
      return {
        failure: {
          status: "error",
          message: `could not continue session ${ticket.session_key}: ${error?.message ?? error}`,
          resume_at: null,
        },
      };
    }
    const runId = typeof result?.runId === "string" && result.runId ? result.runId : ticketId;
    this.parker.claimRun(runId);
    write(runId);
    this.logger().info(
      `agentguard: resuming session ${ticket.session_key} ` +
        `(ticket ${ticketId}, attempt ${ticket.attempt}, run ${runId})`,
    );
    return { runId, startedAt };
  }

  /**
   * Wait for a run to end, through the lifecycle events and `waitForRun`, until `deadline`.
   *
   * @param {string} runId
   * @param {number} deadline - epoch milliseconds.
   * @returns {Promise<Outcome>}
   */
  async awaitOutcome(runId, deadline) {
    for (;;) {
      const remaining = deadline - this.now().getTime();
      if (remaining <= 0) {
        return {
          status: "error",
          message:
            `run ${runId} had not finished within ` +
            `resumeTimeoutSeconds=${this.config().resumeTimeoutSeconds}`,
          resume_at: null,
        };
      }
      const slice = Math.min(remaining, WAIT_SLICE_MS);
      const round = new AbortController();
      const tracked = this.tracker.waitTerminal(runId, slice, round.signal);
      const waited = Promise.resolve()
        .then(() => this.runtime.subagent.waitForRun({ runId, timeoutMs: slice }))
        .catch((error) => ({ status: "unavailable", error: String(error?.message ?? error) }));
      const first = await Promise.race([
        tracked.then((run) => ({ run })),
        waited.then((wait) => ({ wait })),
      ]);
      if (first.run) return outcomeOfRun(first.run, this.tracker, this.now());
      if (first.wait && (first.wait.status === "ok" || first.wait.status === "error")) {
        round.abort();
        // The lifecycle events usually arrive first and say more (the provider's own error).
        const run = await this.tracker.waitTerminal(runId, this.settleMs);
        if (run) return outcomeOfRun(run, this.tracker, this.now());
        return outcomeOfWait(runId, first.wait, this.now());
      }
      if (first.wait) {
        // Not finished yet, or waitForRun unavailable: the tracker's wait bounds this round.
        const run = await tracked;
        if (run) return outcomeOfRun(run, this.tracker, this.now());
      }
    }
  }

  /**
   * Write the ack and remove the ticket and its marker.
   *
   * @param {string} ticketPath
   * @param {string} ackPath
   * @param {string} markerPath
   * @param {string} ticketId
   * @param {object | null} ticket - the ticket, when it could be read.
   * @param {string | null} runId - the run that continued the session, if one started.
   * @param {Outcome} outcome
   */
  writeAck(ticketPath, ackPath, markerPath, ticketId, ticket, runId, outcome) {
    if (!fs.existsSync(ticketPath)) {
      // agentguard stopped waiting (it removes a ticket it gave up on) and will try again.
      this.logger().warn(
        `agentguard: ticket ${ticketId} was withdrawn before its answer ` +
          `(${outcome.status}); not answered`,
      );
      removeFile(markerPath);
      return;
    }
    const sessionKey = typeof ticket?.session_key === "string" ? ticket.session_key : null;
    const sessionId =
      typeof ticket?.session_id === "string" && ticket.session_id
        ? ticket.session_id
        : sessionKey
          ? safeSessionId(sessionKey)
          : null;
    const ack = {
      schema_version: TICKET_VERSION,
      ticket_id: ticketId,
      session_id: sessionId,
      status: outcome.status,
      message: String(outcome.message ?? "").slice(0, 2000),
      resume_at: outcome.resume_at ?? null,
      // Beyond the protocol's fields: which limit refused it again, and the run that tried.
      ...(outcome.kind ? { kind: outcome.kind } : {}),
      run_id: runId,
      written_at: this.now().toISOString(),
    };
    writePrivateJson(path.dirname(ackPath), path.basename(ackPath), ack);
    removeFile(ticketPath);
    removeFile(markerPath);
    const log = outcome.status === "resumed" ? "info" : "warn";
    this.logger()[log](
      `agentguard: ticket ${ticketId} answered ${outcome.status}: ${ack.message.slice(0, 300)}`,
    );
  }
}

/**
 * What is wrong with a ticket, or null when it can be run.
 *
 * @param {unknown} ticket
 * @param {string} ticketId - the id its file name gives.
 * @returns {string | null}
 */
export function ticketProblem(ticket, ticketId) {
  if (!ticket || typeof ticket !== "object" || Array.isArray(ticket)) return "not a JSON object";
  if (ticket.schema_version !== TICKET_VERSION) {
    return `schema_version ${JSON.stringify(ticket.schema_version)} is not ${TICKET_VERSION}`;
  }
  if (ticket.ticket_id !== ticketId) {
    return `ticket_id ${JSON.stringify(ticket.ticket_id)} does not match its file name`;
  }
  if (typeof ticket.session_key !== "string" || !ticket.session_key.trim()) {
    return "session_key is missing";
  }
  if (typeof ticket.message !== "string" || !ticket.message.trim()) return "message is missing";
  if (!Number.isInteger(ticket.attempt) || ticket.attempt < 1) {
    return `attempt ${JSON.stringify(ticket.attempt)} is not a positive integer`;
  }
  return null;
}
