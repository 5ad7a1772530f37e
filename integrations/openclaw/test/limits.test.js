import assert from "node:assert/strict";
import fs from "node:fs";
import { describe, test } from "node:test";

import { classifyLimit, durationMs, parseResetTime, statusOf } from "../lib/limits.js";

const fixture = JSON.parse(
  fs.readFileSync(new URL("./fixtures/openclaw-2026.9.6-runs.json", import.meta.url), "utf8"),
);
const NOW = new Date("2026-11-25T08:00:00Z");
const after = (seconds) => new Date(NOW.getTime() + seconds * 1000);

describe("statusOf", () => {
  test("reads a numeric errorCode, else the number OpenClaw puts before the message", () => {
    assert.equal(statusOf("429", "whatever"), 429);
    assert.equal(statusOf(422, null), 422);
    assert.equal(statusOf("budget_exceeded", "429 Budget exceeded for key sk-...1"), 429);
    assert.equal(statusOf(null, "422 Budget has been exceeded!"), 422);
    assert.equal(statusOf("budget_exceeded", "Budget exceeded"), null);
    assert.equal(statusOf(undefined, undefined), null);
  });
});

describe("classifyLimit", () => {
  test("the recorded OpenClaw 429 as a plugin sees it is a budget window", () => {
    const message = fixture.shared_fixture_last_assistant_message;
    const verdict = classifyLimit({
      status: statusOf(message.errorCode, message.errorMessage),
      errorType: message.errorType,
      errorCode: message.errorCode,
      message: message.errorMessage,
    });
    assert.deepEqual(verdict, {
      kind: "budget_window",
      status: 429,
      errorType: "budget_exceeded",
      errorCode: "429",
      message: "429 Budget exceeded: ...",
    });
  });

  const cases = [
    [
      "LiteLLM key budget, 422",
      { status: 422, errorType: "budget_exceeded", message: "Budget has been exceeded! Key=..." },
      "budget_window",
    ],
    [
      "LiteLLM model budget crossed, 429 with an internal_server_error type",
      {
        status: 429,
        errorType: "internal_server_error",
        message: "No deployments available - crossed budget: Exceeded budget for deployment",
      },
      "budget_window",
    ],
    [
      "OpenAI requests-per-minute limit",
      {
        status: 429,
        errorType: "requests",
        errorCode: "rate_limit_exceeded",
        message: "Rate limit reached for gpt-4o ... Please try again in 120ms.",
      },
      "rate_limit",
    ],
    [
      "OpenAI quota exhausted, 429",
      {
        status: 429,
        errorType: "insufficient_quota",
        errorCode: "insufficient_quota",
        message: "You exceeded your current quota, please check your plan and billing details.",
      },
      "quota_exhausted",
    ],
    [
      "a usage window",
      { message: "You have hit your usage limit; it resets at 2026-11-25 10:00 UTC" },
      "budget_window",
    ],
    ["a bare 429", { status: 429, message: "Too Many Requests" }, "rate_limit"],
    [
      "OpenClaw's own verdict alone",
      { message: "⚠️ something", failoverReason: "rate_limit" },
      "rate_limit",
    ],
    [
      "OpenClaw's billing verdict",
      { message: "payment needed", failoverReason: "billing" },
      "quota_exhausted",
    ],
  ];
  for (const [name, error, kind] of cases) {
    test(name, () => {
      assert.equal(classifyLimit(error)?.kind, kind);
    });
  }

  test("errors that are not limits are not parked", () => {
    for (const error of [
      { status: 400, message: "invalid request: messages must not be empty" },
      { status: 500, message: "internal server error" },
      {
        message: "LLM request failed: provider rejected the request schema or tool payload.",
        failoverReason: "format",
      },
      { message: "Session transcript keyed user is outside the current turn: c833" },
      {},
    ]) {
      assert.equal(classifyLimit(error), null, JSON.stringify(error));
    }
  });

  test("a rate limit without a status is reported as a 429", () => {
    assert.equal(classifyLimit({ message: "rate limit exceeded" }).status, 429);
  });
});

describe("durationMs", () => {
  test("reads single and compound durations", () => {
    assert.equal(durationMs("88s"), 88_000);
    assert.equal(durationMs("29 seconds"), 29_000);
    assert.equal(durationMs("120ms"), 120);
    assert.equal(durationMs("6m0s"), 360_000);
    assert.equal(durationMs("1h30m"), 5_400_000);
    assert.equal(durationMs("2 hours and 5 minutes"), 7_500_000);
    assert.equal(durationMs("20"), 20_000);
    assert.equal(durationMs("soon"), null);
  });
});

describe("parseResetTime", () => {
  const cases = [
    [
      "sim gateway, as OpenClaw shows it",
      "429 Budget exceeded for key sk-...0001 (spent $0.001971 of $0.001000); resets in 88s; Retry-After: 88 seconds",
      after(88),
    ],
    ["OpenAI's hint", "Rate limit reached ... Please try again in 120ms.", after(0.12)],
    [
      "LiteLLM's reset time (UTC)",
      "Limit type: requests. Limit resets at: 2026-11-25 09:32:16 UTC",
      new Date("2026-11-25T09:32:16Z"),
    ],
    [
      "an ISO time with an offset",
      "usage limit; resets at 2026-11-25T12:00:00+02:00",
      new Date("2026-11-25T10:00:00Z"),
    ],
    [
      "an offset without a colon",
      "reset at 2026-11-25T12:00:00+0200",
      new Date("2026-11-25T10:00:00Z"),
    ],
    ["Retry-After in seconds", "Retry-After: 20", after(20)],
    ["a compound duration", "try again in 6m0s", after(360)],
    ["words", "usage limit reached, try again in 2 hours and 5 minutes", after(7500)],
  ];
  for (const [name, text, expected] of cases) {
    test(name, () => {
      assert.deepEqual(parseResetTime(text, NOW), expected);
    });
  }

  test("the latest of several reset times wins", () => {
    assert.deepEqual(parseResetTime("resets in 10s; Retry-After: 30 seconds", NOW), after(30));
  });

  test("a reset already past means now", () => {
    assert.deepEqual(parseResetTime("Limit resets at: 2026-11-25 07:32:16 UTC", NOW), NOW);
  });

  test("no reset time, or an absurd one, is null", () => {
    assert.equal(parseResetTime("429 Budget exceeded: ...", NOW), null);
    assert.equal(parseResetTime("", NOW), null);
    assert.equal(parseResetTime(undefined, NOW), null);
    assert.equal(parseResetTime("resets in 900 days", NOW), null);
    assert.equal(parseResetTime("the 2026-11-25 10:00 meeting", NOW), null);
  });
});
