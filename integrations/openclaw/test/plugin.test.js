import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { afterEach, describe, test } from "node:test";

import plugin from "../index.js";
import { writePrivateJson } from "../lib/files.js";
import { registerPlugin, resetBridges } from "../lib/plugin.js";
import { memoryLogger, RECORDED, tempParking, until } from "./helpers.js";

const manifest = JSON.parse(
  fs.readFileSync(new URL("../openclaw.plugin.json", import.meta.url), "utf8"),
);
const packageJson = JSON.parse(
  fs.readFileSync(new URL("../package.json", import.meta.url), "utf8"),
);

afterEach(() => resetBridges());

/**
 * The parts of OpenClaw's plugin API the plugin uses, recording what it registers.
 *
 * @param {string} mode - `api.registrationMode`.
 * @param {Record<string, unknown>} pluginConfig
 * @param {object} [options]
 */
function fakeApi(mode, pluginConfig, { hooks = { allowConversationAccess: true }, runtime } = {}) {
  const registered = { hooks: [], subscriptions: [], services: [] };
  const logger = memoryLogger();
  const api = {
    id: "agentguard",
    registrationMode: mode,
    pluginConfig,
    config: {
      plugins: { entries: { agentguard: { enabled: true, hooks, config: pluginConfig } } },
    },
    logger,
    runtime: runtime ?? { subagent: {} },
    on: (name, handler) => registered.hooks.push({ name, handler }),
    agent: {
      events: {
        registerAgentEventSubscription: (subscription) =>
          registered.subscriptions.push(subscription),
      },
    },
    registerService: (service) => registered.services.push(service),
  };
  return { api, registered, logger };
}

describe("the package", () => {
  test("manifest and package.json name the plugin and its entry point", () => {
    assert.equal(manifest.id, "agentguard");
    assert.equal(plugin.id, "agentguard");
    assert.equal(packageJson.type, "module");
    assert.deepEqual(packageJson.openclaw.extensions, ["./index.js"]);
    assert.deepEqual(packageJson.dependencies ?? {}, {});
    assert.equal(typeof plugin.register, "function");
  });

  test("the config schema documents every setting with its default", () => {
    const properties = manifest.configSchema.properties;
    assert.equal(manifest.configSchema.additionalProperties, false);
    assert.equal(properties.parkingDir.default, "~/.agentguard/parked");
    assert.equal(properties.windowHours.default, 5);
    assert.equal(properties.maxAttempts.default, 3);
    assert.equal(properties.pollIntervalMs.default, 1000);
    for (const name of [
      "parkingDir",
      "windowHours",
      "maxAttempts",
      "pollIntervalMs",
      "budgetKey",
      "continueMessage",
      "deliver",
      "resumeTimeoutSeconds",
    ]) {
      assert.ok(properties[name]?.description, name);
    }
  });
});

describe("registration", () => {
  test("full mode registers the hook, the lifecycle subscription and the outbox service", () => {
    const { config } = tempParking();
    const { api, registered } = fakeApi("full", { parkingDir: config.parkingDir });
    plugin.register(api);
    assert.deepEqual(
      registered.hooks.map((hook) => hook.name),
      ["agent_end"],
    );
    assert.deepEqual(registered.subscriptions[0].streams, ["lifecycle"]);
    assert.deepEqual(
      registered.services.map((service) => service.id),
      ["agentguard-outbox"],
    );
  });

  test("discovery mode registers the hook and subscription but starts nothing", () => {
    const { config } = tempParking();
    const { api, registered } = fakeApi("discovery", { parkingDir: config.parkingDir });
    plugin.register(api);
    assert.equal(registered.hooks.length, 1);
    assert.equal(registered.subscriptions.length, 1);
    assert.deepEqual(registered.services, []);
  });

  test("metadata-only modes register nothing", () => {
    for (const mode of ["cli-metadata", "setup-only"]) {
      const { api, registered } = fakeApi(mode, {});
      plugin.register(api);
      assert.deepEqual(registered, { hooks: [], subscriptions: [], services: [] });
    }
  });

  test("config warnings and a missing conversation grant are logged once, in full mode", () => {
    const { config } = tempParking();
    const { api, logger } = fakeApi(
      "full",
      { parkingDir: config.parkingDir, windowHours: "five" },
      { hooks: {} },
    );
    plugin.register(api);
    assert.ok(
      logger.lines.some((line) => /windowHours="five" is not a positive number/.test(line)),
    );
    assert.ok(logger.lines.some((line) => /allowConversationAccess is not true/.test(line)));
  });
});

describe("two registrations, one bridge", () => {
  test("agent_end in one registration and lifecycle events in the other park the run", async () => {
    const { config } = tempParking();
    const full = fakeApi("full", { parkingDir: config.parkingDir });
    const discovery = fakeApi("discovery", { parkingDir: config.parkingDir });
    const bridge = registerPlugin(full.api, { settleMs: 10 });
    assert.equal(registerPlugin(discovery.api, { settleMs: 10 }), bridge);
    // As OpenClaw 2026.9.6 does: the hook fires from the discovery registration, the
    // subscription from the full one.
    const hook = discovery.registered.hooks[0].handler;
    const subscription = full.registered.subscriptions[0].handle;
    for (const step of RECORDED.runs.failed_after_fallback.steps) {
      if (step.kind === "agent_end") hook(step.event, step.ctx);
      else subscription(step.event, {});
    }
    const inbox = path.join(config.parkingDir, "inbox");
    await until(() => fs.existsSync(inbox) && fs.readdirSync(inbox).length === 1);
    const record = JSON.parse(fs.readFileSync(path.join(inbox, "agent:main:e2e-4.json"), "utf8"));
    assert.equal(record.metadata.message, "Second, should hit the limit");
    assert.ok(full.logger.lines.some((line) => line.includes("parked session agent:main:e2e-4")));
  });

  test("a handler error is logged, never thrown into OpenClaw", () => {
    const { config } = tempParking();
    const { api, registered, logger } = fakeApi("full", { parkingDir: config.parkingDir });
    plugin.register(api);
    const poisoned = {
      get messages() {
        throw new Error("boom");
      },
    };
    assert.doesNotThrow(() => registered.hooks[0].handler(poisoned, { runId: "r" }));
    assert.ok(logger.lines.some((line) => line.startsWith("error: agentguard: agent_end failed")));
  });

  test("stopping a replaced instance leaves its successor's service running", async () => {
    const { config } = tempParking({ pollIntervalMs: 50 });
    const settings = { parkingDir: config.parkingDir, pollIntervalMs: 50 };
    const old = fakeApi("full", settings);
    const replacement = fakeApi("full", settings);
    const bridge = registerPlugin(old.api);
    registerPlugin(replacement.api);
    await old.registered.services[0].start({});
    await replacement.registered.services[0].start({});
    const running = bridge.service;
    await old.registered.services[0].stop({});
    assert.equal(bridge.service, running);
    assert.equal(running.stopped, false);
    await replacement.registered.services[0].stop({});
    assert.equal(bridge.service, null);
    assert.equal(running.stopped, true);
  });

  test("the service answers tickets through api.runtime.subagent", async () => {
    const { config } = tempParking({ pollIntervalMs: 50 });
    const calls = [];
    let bridge = null;
    const runtime = {
      subagent: {
        async run(params) {
          calls.push(params);
          setTimeout(() => {
            bridge.onAgentEvent({
              runId: params.idempotencyKey,
              seq: 1,
              stream: "lifecycle",
              sessionKey: params.sessionKey,
              data: { phase: "end", stopReason: "stop", terminalReply: { text: "done" } },
            });
          }, 5);
          return { runId: params.idempotencyKey };
        },
        async waitForRun({ runId }) {
          return { runId, status: "timeout" };
        },
      },
    };
    const { api, registered } = fakeApi(
      "full",
      { parkingDir: config.parkingDir, pollIntervalMs: 50 },
      { runtime },
    );
    bridge = registerPlugin(api);
    await registered.services[0].start({ stateDir: "/tmp" });
    const outbox = path.join(config.parkingDir, "outbox");
    writePrivateJson(outbox, "agent:main:x.0.aa.json", {
      schema_version: 1,
      ticket_id: "agent:main:x.0.aa",
      session_id: "agent:main:x",
      session_key: "agent:main:x",
      message: "go on",
      attempt: 1,
      written_at: new Date().toISOString(),
    });
    const ack = path.join(config.parkingDir, "acks", "agent:main:x.0.aa.json");
    await until(() => fs.existsSync(ack));
    assert.equal(JSON.parse(fs.readFileSync(ack, "utf8")).status, "resumed");
    assert.equal(calls.length, 1);
    await registered.services[0].stop({});
  });
});
