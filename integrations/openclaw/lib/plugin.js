/**
 * Wiring the plugin into OpenClaw.
 *
 * OpenClaw calls `register(api)` more than once per gateway: in `"full"` mode (live activation)
 * and in `"discovery"` mode (capability discovery), each on a fresh instance of this module.
 * Which registration's handlers then fire is OpenClaw's business: on 2026.9.6 the `agent_end`
 * hook fires from the discovery registration and lifecycle subscriptions from the full one. So
 * the hook and the subscription are registered in every mode (registering them starts nothing),
 * both feed one process-wide bridge per parking directory, and the service, the only thing
 * with side effects of its own, is registered in `"full"` mode only.
 */

import { resolveConfig } from "./config.js";
import { TicketService } from "./outbox.js";
import { Parker } from "./parker.js";
import { RunTracker } from "./tracker.js";

export const PLUGIN_ID = "agentguard";
const SHARED = Symbol.for("agentguard.openclaw-plugin.bridges");
// Modes in which OpenClaw only reads metadata; the runtime API is not there.
const METADATA_MODES = new Set(["setup-only", "cli-metadata"]);

const quietLogger = { info() {}, warn() {}, error() {}, debug() {} };

/** What the plugin's registrations in one process share, for one parking directory. */
export class Bridge {
  /**
   * @param {import("./config.js").PluginConfig} config
   * @param {object} [options]
   * @param {number} [options.settleMs] - how long after a run ends to wait for a late
   *   `agent_end` before deciding whether to park it.
   * @param {() => Date} [options.now] - the clock.
   */
  constructor(config, { settleMs = 250, now = () => new Date() } = {}) {
    this.config = config;
    this.logger = quietLogger;
    this.settleMs = settleMs;
    this.now = now;
    this.tracker = new RunTracker();
    this.parker = new Parker({
      config: () => this.config,
      logger: () => this.logger,
      tracker: this.tracker,
      now,
    });
    this.service = null;
    this.pending = new Set();
    this.tracker.onTerminal((run) => {
      const timer = setTimeout(() => {
        this.pending.delete(timer);
        this.safely("parking", () => this.parker.consider(run));
      }, this.settleMs);
      timer.unref?.();
      this.pending.add(timer);
    });
  }

  /**
   * Run `action`, logging instead of throwing: a plugin error must never break an agent run.
   *
   * @param {string} what
   * @param {() => unknown} action
   * @returns {unknown}
   */
  safely(what, action) {
    try {
      return action();
    } catch (error) {
      this.logger.error(`agentguard: ${what} failed: ${error?.stack ?? error}`);
      return null;
    }
  }

  /** The `agent_end` hook. */
  onAgentEnd(event, ctx) {
    this.safely("agent_end", () => this.tracker.noteAgentEnd(event, ctx));
  }

  /** The lifecycle agent-event subscription. */
  onAgentEvent(event) {
    this.safely("agent event", () => this.tracker.noteAgentEvent(event));
  }

  /**
   * Start the outbox service (once per bridge).
   *
   * @param {object} runtime - OpenClaw's `api.runtime`.
   * @returns {TicketService}
   */
  startService(runtime) {
    this.service?.stop();
    this.service = new TicketService({
      config: () => this.config,
      logger: () => this.logger,
      runtime,
      tracker: this.tracker,
      parker: this.parker,
      now: this.now,
    });
    this.service.start();
    return this.service;
  }

  /**
   * Stop the outbox service, if it is `service` (or any, when none is named).
   *
   * @param {TicketService | null} [service] - the service a registration started.
   */
  stopService(service = null) {
    if (service !== null && service !== this.service) {
      // A newer registration's service replaced it (OpenClaw may start the new instance
      // before it stops the old one): leave the new one running.
      service.stop();
      return;
    }
    this.service?.stop();
    this.service = null;
  }

  /** Stop everything, pending park decisions included (tests; OpenClaw just exits). */
  stop() {
    this.stopService();
    for (const timer of this.pending) clearTimeout(timer);
    this.pending.clear();
  }
}

/**
 * The bridge for `config.parkingDir` in this process, created on first use.
 *
 * @param {import("./config.js").PluginConfig} config
 * @param {object} [options] - passed to a new {@link Bridge}.
 * @returns {Bridge}
 */
export function sharedBridge(config, options) {
  globalThis[SHARED] ??= new Map();
  const bridges = globalThis[SHARED];
  let bridge = bridges.get(config.parkingDir);
  if (!bridge) {
    bridge = new Bridge(config, options);
    bridges.set(config.parkingDir, bridge);
  }
  // A re-registration carries the current config (OpenClaw re-registers on config changes).
  bridge.config = config;
  return bridge;
}

/** Stop and forget every bridge of this process (for tests). */
export function resetBridges() {
  for (const bridge of globalThis[SHARED]?.values() ?? []) bridge.stop();
  globalThis[SHARED]?.clear();
}

/**
 * Register the plugin with OpenClaw.
 *
 * @param {object} api - OpenClaw's plugin API.
 * @param {object} [options] - passed to a new {@link Bridge} (tests shorten `settleMs`).
 * @returns {Bridge | null} the bridge, or null in metadata-only modes.
 */
export function registerPlugin(api, options) {
  const mode = api.registrationMode ?? "full";
  if (METADATA_MODES.has(mode)) return null;
  const { config, warnings } = resolveConfig(api.pluginConfig);
  const bridge = sharedBridge(config, options);
  if (mode === "full" || bridge.logger === quietLogger) bridge.logger = api.logger ?? quietLogger;

  if (typeof api.on === "function") {
    api.on("agent_end", (event, ctx) => bridge.onAgentEnd(event, ctx));
  }
  const events = api.agent?.events ?? api;
  if (typeof events.registerAgentEventSubscription === "function") {
    events.registerAgentEventSubscription({
      id: "agentguard-lifecycle",
      description: "Sees how runs end, to park the ones that failed on a limit",
      streams: ["lifecycle"],
      handle: (event) => bridge.onAgentEvent(event),
    });
  } else if (mode === "full") {
    bridge.logger.error(
      "agentguard: this OpenClaw has no agent event subscriptions; failed runs cannot be seen",
    );
  }
  if (mode !== "full") return bridge;

  for (const warning of warnings) bridge.logger.warn(`agentguard: ${warning}`);
  const entry = api.config?.plugins?.entries?.[api.id ?? PLUGIN_ID];
  if (entry && entry.hooks?.allowConversationAccess !== true) {
    bridge.logger.warn(
      `agentguard: plugins.entries.${api.id ?? PLUGIN_ID}.hooks.allowConversationAccess is not ` +
        "true, so agent_end is blocked: runs still park, but resume with the configured " +
        'continueMessage (or "Continue.") instead of the last user message',
    );
  }
  let started = null;
  api.registerService({
    id: "agentguard-outbox",
    start: () => {
      started = bridge.startService(api.runtime);
    },
    stop: () => {
      bridge.stopService(started);
      started = null;
    },
  });
  return bridge;
}
