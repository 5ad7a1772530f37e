/**
 * The plugin's configuration (`plugins.entries.agentguard.config` in `openclaw.json`), with
 * defaults. A bad value never stops the gateway: it falls back to the default with a warning.
 */

import os from "node:os";
import path from "node:path";

/** The defaults; `parkingDir` is resolved as agentguard resolves `parking.dir`. */
export const DEFAULTS = Object.freeze({
  parkingDir: "~/.agentguard/parked",
  windowHours: 5,
  maxAttempts: 3,
  pollIntervalMs: 1000,
  budgetKey: "openclaw",
  continueMessage: null,
  deliver: false,
  resumeTimeoutSeconds: 240,
});

const BUDGET_KEY = /^[A-Za-z0-9._:@-]{1,200}$/;

/**
 * @typedef {object} PluginConfig
 * @property {string} parkingDir - absolute path of agentguard's parking directory.
 * @property {number} windowHours - hours until a limit resets when its error does not say.
 * @property {number} maxAttempts - resume tickets past this attempt are refused.
 * @property {number} pollIntervalMs - how often the outbox is scanned (besides watching it).
 * @property {string} budgetKey - the budget key parked records are filed under.
 * @property {string | null} continueMessage - sent on resume instead of the last user message.
 * @property {boolean} deliver - deliver the resumed run's reply to the session's channel.
 * @property {number} resumeTimeoutSeconds - how long a resumed run may take before the ticket is
 *   answered `error`.
 */

/**
 * Expand a leading `~` to the home directory and make the path absolute.
 *
 * @param {string} value
 * @param {string} home
 * @returns {string}
 */
export function expandHome(value, home = os.homedir()) {
  if (value === "~") return home;
  if (value.startsWith("~/")) return path.join(home, value.slice(2));
  return path.resolve(value);
}

/**
 * The parking directory when the config names none: agentguard's own default, so both sides
 * meet without configuration (`$AGENTGUARD_PARKING__DIR`, else `$AGENTGUARD_HOME/parked`, else
 * `~/.agentguard/parked`).
 *
 * @param {Record<string, string | undefined>} env
 * @param {string} home
 * @returns {string}
 */
export function defaultParkingDir(env = process.env, home = os.homedir()) {
  if (env.AGENTGUARD_PARKING__DIR) return expandHome(env.AGENTGUARD_PARKING__DIR, home);
  if (env.AGENTGUARD_HOME) return path.join(expandHome(env.AGENTGUARD_HOME, home), "parked");
  return expandHome(DEFAULTS.parkingDir, home);
}

/**
 * Resolve the plugin config: defaults filled in, bad values replaced by defaults.
 *
 * @param {Record<string, unknown> | undefined} raw - `api.pluginConfig`.
 * @param {object} [options]
 * @param {Record<string, string | undefined>} [options.env] - the environment.
 * @param {string} [options.home] - the home directory.
 * @returns {{config: PluginConfig, warnings: string[]}}
 */
export function resolveConfig(raw, { env = process.env, home = os.homedir() } = {}) {
  const source = raw && typeof raw === "object" ? raw : {};
  const warnings = [];
  const pick = (name, valid, expected) => {
    const value = source[name];
    if (value === undefined || value === null) return DEFAULTS[name];
    if (valid(value)) return value;
    warnings.push(
      `config ${name}=${JSON.stringify(value)} is not ${expected}; ` +
        `using ${JSON.stringify(DEFAULTS[name])}`,
    );
    return DEFAULTS[name];
  };
  const positive = (value) => typeof value === "number" && Number.isFinite(value) && value > 0;
  const positiveInteger = (value) => Number.isInteger(value) && value > 0;
  const parkingDirValue = pick(
    "parkingDir",
    (value) => typeof value === "string" && value.trim() !== "",
    "a directory path",
  );
  const config = {
    parkingDir:
      source.parkingDir === undefined || source.parkingDir === null
        ? defaultParkingDir(env, home)
        : expandHome(parkingDirValue, home),
    windowHours: pick("windowHours", positive, "a positive number of hours"),
    maxAttempts: pick("maxAttempts", positiveInteger, "a positive integer"),
    pollIntervalMs: pick(
      "pollIntervalMs",
      (value) => positiveInteger(value) && value >= 50,
      "an integer of at least 50 (milliseconds)",
    ),
    budgetKey: pick(
      "budgetKey",
      (value) => typeof value === "string" && BUDGET_KEY.test(value),
      "1-200 characters of letters, digits and ._:@-",
    ),
    continueMessage: pick(
      "continueMessage",
      (value) => typeof value === "string" && value.trim() !== "",
      "a non-empty string",
    ),
    deliver: pick("deliver", (value) => typeof value === "boolean", "true or false"),
    resumeTimeoutSeconds: pick("resumeTimeoutSeconds", positive, "a positive number of seconds"),
  };
  const known = new Set(Object.keys(DEFAULTS));
  for (const name of Object.keys(source)) {
    if (!known.has(name)) warnings.push(`config ${name} is not a setting of this plugin; ignored`);
  }
  return { config, warnings };
}
