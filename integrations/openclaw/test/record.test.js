import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { resolveConfig } from "../lib/config.js";
import { buildParkedRecord, contentText, lastUserText, safeSessionId } from "../lib/record.js";

const NOW = new Date("2026-11-25T08:00:00Z");
const { config } = resolveConfig({ parkingDir: "/tmp/agentguard-test-parked" });
const SAFE = /^[A-Za-z0-9._:@-]{1,200}$/;

describe("safeSessionId", () => {
  test("a key of safe characters is kept as it is", () => {
    assert.equal(safeSessionId("agent:main:telegram:direct:123"), "agent:main:telegram:direct:123");
    assert.equal(safeSessionId("agent:main:user@example.com"), "agent:main:user@example.com");
  });

  test("other characters become underscores", () => {
    assert.equal(
      safeSessionId("agent:main:slack/#general thread"),
      "agent:main:slack__general_thread",
    );
    assert.equal(safeSessionId("../../etc/passwd"), ".._.._etc_passwd");
    assert.equal(safeSessionId("agent:main:日本"), "agent:main:__");
  });

  test("a long key is cut to 200 characters and keeps a hash of the whole key", () => {
    const long = `agent:main:${"x".repeat(300)}`;
    const other = `agent:main:${"x".repeat(299)}y`;
    const id = safeSessionId(long);
    assert.equal(id.length, 200);
    assert.match(id, SAFE);
    assert.notEqual(id, safeSessionId(other));
    assert.equal(id, safeSessionId(long));
  });

  test("never empty, never . or ..", () => {
    for (const key of ["", ".", "..", null]) {
      const id = safeSessionId(key);
      assert.match(id, SAFE);
      assert.ok(id !== "." && id !== "..", id);
    }
  });
});

describe("message text", () => {
  test("content is a string or an array of parts", () => {
    assert.equal(contentText("hello"), "hello");
    assert.equal(
      contentText([
        { type: "text", text: "a" },
        { type: "image", url: "x" },
        { type: "text", text: "b" },
      ]),
      "a\nb",
    );
    assert.equal(contentText(null), "");
  });

  test("the last user message is found behind assistant messages", () => {
    const messages = [
      { role: "user", content: "first" },
      { role: "assistant", content: [{ type: "text", text: "answer" }] },
      { role: "user", content: [{ type: "text", text: "second" }] },
      { role: "assistant", content: [], stopReason: "error" },
    ];
    assert.equal(lastUserText(messages), "second");
    assert.equal(lastUserText([{ role: "assistant", content: "x" }]), null);
    assert.equal(lastUserText(undefined), null);
  });
});

describe("buildParkedRecord", () => {
  const run = {
    sessionKey: "agent:main:e2e-4",
    runId: "1ff4211d",
    agentId: "main",
    sessionId: "290e036d",
    provider: "sim",
    model: "gpt-4o",
    userText: "Second, should hit the limit",
  };
  const verdict = {
    kind: "budget_window",
    status: 429,
    errorType: "budget_exceeded",
    errorCode: "budget_exceeded",
    message: "429 Budget exceeded for key sk-...0001; resets in 88s; Retry-After: 88 seconds",
  };

  test("follows agentguard's parked-session schema", () => {
    const record = buildParkedRecord(run, verdict, config, NOW);
    assert.deepEqual(record, {
      schema_version: 1,
      session_id: "agent:main:e2e-4",
      budget_key: "openclaw",
      framework: "openclaw",
      resumer: "openclaw",
      request: {
        model: "gpt-4o",
        messages: [{ role: "user", content: "Second, should hit the limit" }],
      },
      metadata: {
        session_key: "agent:main:e2e-4",
        message: "Second, should hit the limit",
        run_id: "1ff4211d",
        agent_id: "main",
        openclaw_session_id: "290e036d",
        provider: "sim",
        proxy_sessions: [],
      },
      reason: {
        kind: "budget_window",
        status: 429,
        error_type: "budget_exceeded",
        error_code: "budget_exceeded",
        message: verdict.message,
        headers: {},
        reset_source: "message",
        budget_key: "openclaw",
      },
      state: "parked",
      parked_at: "2026-11-25T08:00:00.000Z",
      resume_at: "2026-11-25T08:01:28.000Z",
      attempts: 0,
      history: [
        {
          at: "2026-11-25T08:00:00.000Z",
          state: "parked",
          note: "OpenClaw run 1ff4211d failed on a budget_window",
        },
      ],
    });
  });

  test("without a reset time in the error, resumes windowHours later", () => {
    const record = buildParkedRecord(
      run,
      { ...verdict, message: "Budget has been exceeded! Key=sk-...0001" },
      { ...config, windowHours: 2 },
      NOW,
    );
    assert.equal(record.resume_at, "2026-11-25T10:00:00.000Z");
    assert.equal(record.reason.reset_source, "plugin.windowHours");
  });

  test("a configured continue message is what resumes it; the request keeps the user's", () => {
    const record = buildParkedRecord(run, verdict, { ...config, continueMessage: "Go on." }, NOW);
    assert.equal(record.metadata.message, "Go on.");
    assert.equal(record.request.messages[0].content, "Second, should hit the limit");
  });

  test("without the conversation, it resumes with 'Continue.'", () => {
    const record = buildParkedRecord({ ...run, userText: null, model: null }, verdict, config, NOW);
    assert.equal(record.metadata.message, "Continue.");
    assert.equal(record.request.model, "unknown");
  });

  test("an exhausted quota is recorded failed, never to be resumed", () => {
    const record = buildParkedRecord(
      run,
      {
        ...verdict,
        kind: "quota_exhausted",
        message: "You exceeded your current quota; try again in 20s",
      },
      config,
      NOW,
    );
    assert.equal(record.state, "failed");
    assert.equal(record.resume_at, null);
    assert.equal(record.reason.reset_source, null);
  });

  test("holds no keys or headers", () => {
    const text = JSON.stringify(buildParkedRecord(run, verdict, config, NOW));
    assert.doesNotMatch(text, /api_key|authorization|bearer/i);
  });
});

describe("resolveConfig", () => {
  test("defaults", () => {
    const { config: resolved, warnings } = resolveConfig(undefined, {
      env: {},
      home: "/home/someone",
    });
    assert.deepEqual(resolved, {
      parkingDir: "/home/someone/.agentguard/parked",
      windowHours: 5,
      maxAttempts: 3,
      pollIntervalMs: 1000,
      budgetKey: "openclaw",
      continueMessage: null,
      deliver: false,
      resumeTimeoutSeconds: 240,
    });
    assert.deepEqual(warnings, []);
  });

  test("the parking directory follows agentguard's environment when not configured", () => {
    const home = "/home/someone";
    assert.equal(
      resolveConfig({}, { env: { AGENTGUARD_HOME: "/srv/ag" }, home }).config.parkingDir,
      "/srv/ag/parked",
    );
    assert.equal(
      resolveConfig({}, { env: { AGENTGUARD_PARKING__DIR: "~/p", AGENTGUARD_HOME: "/x" }, home })
        .config.parkingDir,
      "/home/someone/p",
    );
    assert.equal(
      resolveConfig({ parkingDir: "~/mine" }, { env: { AGENTGUARD_HOME: "/x" }, home }).config
        .parkingDir,
      "/home/someone/mine",
    );
  });

  test("bad values fall back to the defaults, with a warning each", () => {
    const { config: resolved, warnings } = resolveConfig(
      {
        windowHours: -1,
        maxAttempts: 1.5,
        pollIntervalMs: 10,
        budgetKey: "no spaces please",
        deliver: "yes",
        typo: 1,
      },
      { env: {}, home: "/h" },
    );
    assert.equal(resolved.windowHours, 5);
    assert.equal(resolved.maxAttempts, 3);
    assert.equal(resolved.pollIntervalMs, 1000);
    assert.equal(resolved.budgetKey, "openclaw");
    assert.equal(resolved.deliver, false);
    assert.equal(warnings.length, 6);
    assert.match(warnings.at(-1), /typo is not a setting/);
  });
});
