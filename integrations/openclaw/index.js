/**
 * agentguard for OpenClaw: parks sessions whose run failed on a provider limit (a 429, a spent
 * gateway budget) in agentguard's inbox, and continues them when agentguard's daemon says the
 * limit has reset.
 *
 * Entry point named by `package.json` (`openclaw.extensions`); the manifest is
 * `openclaw.plugin.json` (plugin id `agentguard`).
 */

import { PLUGIN_ID, registerPlugin } from "./lib/plugin.js";

export default {
  id: PLUGIN_ID,
  name: "agentguard",
  description:
    "Parks OpenClaw sessions that fail on a provider limit and resumes them when it resets.",
  register(api) {
    registerPlugin(api);
  },
};
