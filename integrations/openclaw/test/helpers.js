/** Shared pieces of the unit tests: recorded runs, temporary parking directories, fakes. */

import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { resolveConfig } from "../lib/config.js";

/** Recorded OpenClaw 2026.9.6 runs (see fixtures/openclaw-2026.9.6-runs.json). */
export const RECORDED = JSON.parse(
  fs.readFileSync(new URL("./fixtures/openclaw-2026.9.6-runs.json", import.meta.url), "utf8"),
);

/**
 * Feed a recorded run's steps to a tracker (or anything with the same two methods).
 *
 * @param {{noteAgentEnd: Function, noteAgentEvent: Function}} target
 * @param {object[]} steps
 */
export function replay(target, steps) {
  for (const step of steps) {
    if (step.kind === "agent_end") target.noteAgentEnd(step.event, step.ctx);
    else target.noteAgentEvent(step.event);
  }
}

/**
 * A fresh parking directory and a config pointing at it.
 *
 * @param {Record<string, unknown>} [overrides] - plugin config values.
 * @returns {{dir: string, config: import("../lib/config.js").PluginConfig}}
 */
export function tempParking(overrides = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "agentguard-openclaw-test-"));
  const { config } = resolveConfig({ parkingDir: dir, ...overrides });
  return { dir, config };
}

/** A logger that keeps what it is told. */
export function memoryLogger() {
  const lines = [];
  const add = (level) => (message) => lines.push(`${level}: ${message}`);
  return { lines, debug: add("debug"), info: add("info"), warn: add("warn"), error: add("error") };
}

/**
 * The mode bits of a file.
 *
 * @param {string} file
 * @returns {number}
 */
export function modeOf(file) {
  return fs.statSync(file).mode & 0o777;
}

/**
 * Wait until `predicate()` is true (polling), or fail after `timeoutMs`.
 *
 * @param {() => boolean} predicate
 * @param {number} [timeoutMs]
 * @returns {Promise<void>}
 */
export async function until(predicate, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
