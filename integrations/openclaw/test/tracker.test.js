import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";

import { Parker } from "../lib/parker.js";
import { RunTracker } from "../lib/tracker.js";
import { memoryLogger, modeOf, RECORDED, replay, tempParking } from "./helpers.js";

const NOW = new Date("2026-11-25T08:00:00Z");

/** A tracker and a parker on a fresh parking directory; ended runs are parked at once. */
function setup(overrides) {
  const { dir, config } = tempParking(overrides);
  const tracker = new RunTracker();
  const logger = memoryLogger();
  const parker = new Parker({
    config: () => config,
    logger: () => logger,
    tracker,
    now: () => NOW,
  });
  const written = [];
  tracker.onTerminal((run) => {
    const file = parker.consider(run);
    if (file) written.push(file);
  });
  return { dir, config, tracker, parker, logger, written };
}

const inboxFiles = (dir) => {
  try {
    return fs.readdirSync(path.join(dir, "inbox"));
  } catch {
    return [];
  }
};

describe("detecting a run that really failed on a limit (recorded OpenClaw runs)", () => {
  for (const [name, run] of Object.entries(RECORDED.runs)) {
    test(`${name}: ${run.about}`, () => {
      const { dir, tracker, written } = setup();
      replay(tracker, run.steps);
      const runId = run.steps[0].event.runId;
      assert.equal(tracker.runs.get(runId).terminal.outcome, run.expect.outcome);
      if (!run.expect.park) {
        assert.deepEqual(written, []);
        assert.deepEqual(inboxFiles(dir), []);
        return;
      }
      assert.equal(written.length, 1);
      const record = JSON.parse(fs.readFileSync(written[0], "utf8"));
      const expected = run.expect.park;
      assert.equal(record.session_id, run.sessionKey);
      assert.equal(record.metadata.session_key, run.sessionKey);
      assert.equal(record.metadata.run_id, runId);
      assert.equal(record.metadata.agent_id, "main");
      assert.equal(record.metadata.message, expected.message);
      assert.deepEqual(record.request.messages, [{ role: "user", content: expected.message }]);
      assert.equal(record.request.model, expected.model);
      assert.equal(record.reason.kind, expected.kind);
      assert.equal(record.reason.status, expected.status);
      assert.equal(record.reason.error_type, "budget_exceeded");
      assert.equal(record.state, "parked");
      assert.equal(record.attempts, 0);
      if (expected.resetSeconds === null) {
        assert.equal(record.reason.reset_source, "plugin.windowHours");
        assert.equal(record.resume_at, "2026-11-25T13:00:00.000Z");
      } else {
        assert.equal(record.reason.reset_source, "message");
        assert.equal(
          record.resume_at,
          new Date(NOW.getTime() + expected.resetSeconds * 1000).toISOString(),
        );
      }
    });
  }

  test("an attempt that failed is not a failed run: nothing is parked before the run ends", () => {
    const { tracker, written } = setup();
    const steps = RECORDED.runs.failed_after_fallback.steps;
    replay(tracker, steps.slice(0, -1));
    assert.deepEqual(written, []);
    replay(tracker, steps.slice(-1));
    assert.equal(written.length, 1);
  });

  test("the same events seen twice (two live registrations) park once", () => {
    const { dir, tracker, written } = setup();
    const steps = RECORDED.runs.failed_after_fallback.steps;
    for (const step of steps) replay(tracker, [step, step]);
    assert.equal(written.length, 1);
    assert.equal(inboxFiles(dir).length, 1);
  });

  test("without agent_end (no conversation access), the lifecycle events still park it", () => {
    const { tracker, written, logger } = setup();
    const steps = RECORDED.runs.failed_after_fallback.steps.filter((s) => s.kind === "event");
    replay(tracker, steps);
    assert.equal(written.length, 1);
    const record = JSON.parse(fs.readFileSync(written[0], "utf8"));
    assert.equal(record.reason.kind, "budget_window");
    assert.equal(record.reason.reset_source, "message");
    assert.equal(record.metadata.message, "Continue.");
    assert.equal(record.request.model, "gpt-4o");
    assert.ok(logger.lines.some((line) => line.includes("allowConversationAccess")));
  });

  test("an aborted run is not parked", () => {
    const { tracker, written } = setup();
    const steps = RECORDED.runs.lane_timeout.steps.slice(0, -1);
    replay(tracker, steps);
    tracker.noteAgentEvent({
      runId: "33e54207",
      sessionKey: "agent:main:e2e-5",
      stream: "lifecycle",
      seq: 99,
      data: { phase: "end", aborted: true, stopReason: "aborted" },
    });
    assert.equal(tracker.runs.get("33e54207").terminal.outcome, "aborted");
    assert.deepEqual(written, []);
  });

  test("a run that failed for another reason is not parked", () => {
    const { tracker, written } = setup();
    tracker.noteAgentEnd(
      {
        messages: [
          { role: "user", content: "hi" },
          {
            role: "assistant",
            stopReason: "error",
            errorMessage: "Session transcript keyed user is outside the current turn: c833",
          },
        ],
        success: true,
      },
      { runId: "r1", sessionKey: "agent:main:x" },
    );
    tracker.noteAgentEvent({
      runId: "r1",
      sessionKey: "agent:main:x",
      stream: "lifecycle",
      seq: 3,
      data: { phase: "error", error: "All models failed (2): ... (unknown)" },
    });
    assert.equal(tracker.runs.get("r1").terminal.outcome, "failed");
    assert.deepEqual(written, []);
  });

  test("the sessions agentguard proxy refused in each attempt are handed on in the record", () => {
    const { tracker, written } = setup();
    const refusal = (session) =>
      `429 budget 'team' exceeded for session '${session}': limit $0.003 per 75s window ` +
      "(rolling), spent $0.002, this call needs up to $0.0022; resets at 2026-11-25T08:01:05+00:00";
    const primary = "proxy-07e992d1d1dc92a0269d5f26";
    const fallback = "proxy-8a57d49fb488e4176aed67e0";
    for (const [seq, session, model] of [
      [1, primary, "gpt-4o-mini"],
      [2, fallback, "gpt-4o-mini-2024-07-18"],
    ]) {
      tracker.noteAgentEnd(
        {
          messages: [
            { role: "user", content: "Summarise it." },
            { role: "assistant", model, stopReason: "error", errorMessage: refusal(session) },
          ],
          success: true,
        },
        { runId: "r7", sessionKey: "agent:main:p" },
      );
      tracker.noteAgentEvent({
        runId: "r7",
        sessionKey: "agent:main:p",
        stream: "lifecycle",
        seq,
        data: { phase: "finishing", error: refusal(session) },
      });
    }
    tracker.noteAgentEvent({
      runId: "r7",
      sessionKey: "agent:main:p",
      stream: "lifecycle",
      seq: 3,
      data: { phase: "error", error: `All models failed (2): ${refusal(primary)}` },
    });
    assert.equal(written.length, 1);
    const record = JSON.parse(fs.readFileSync(written[0], "utf8"));
    assert.deepEqual(record.metadata.proxy_sessions, [primary, fallback]);
  });

  test("waitTerminal resolves when the run ends, or null on timeout", async () => {
    const tracker = new RunTracker();
    const waiting = tracker.waitTerminal("1ff4211d", 1000);
    replay(tracker, RECORDED.runs.failed_after_fallback.steps);
    assert.equal((await waiting).terminal.outcome, "failed");
    assert.equal((await tracker.waitTerminal("1ff4211d", 10)).runId, "1ff4211d");
    assert.equal(await tracker.waitTerminal("never", 10), null);
  });
});

describe("writing the inbox record", () => {
  test("0600 file in a 0700 inbox, written whole (no temporary left behind)", () => {
    const { dir, tracker, written } = setup();
    replay(tracker, RECORDED.runs.litellm_422.steps);
    assert.equal(written.length, 1);
    assert.equal(modeOf(path.join(dir, "inbox")), 0o700);
    assert.equal(modeOf(written[0]), 0o600);
    assert.deepEqual(inboxFiles(dir), ["agent:main:e2e-3.json"]);
  });

  test("a later failed run of the same session replaces a record not yet ingested", () => {
    const { dir, tracker, written } = setup();
    replay(tracker, RECORDED.runs.failed_after_fallback.steps);
    const again = RECORDED.runs.failed_after_fallback.steps.map((step) => {
      const copy = structuredClone(step);
      if (copy.kind === "agent_end") {
        copy.ctx.runId = "second-run";
        copy.event.messages[2].content = "Third message";
      } else {
        copy.event.runId = "second-run";
      }
      return copy;
    });
    replay(tracker, again);
    assert.equal(written.length, 2);
    assert.deepEqual(inboxFiles(dir), ["agent:main:e2e-4.json"]);
    const record = JSON.parse(fs.readFileSync(written[1], "utf8"));
    assert.equal(record.metadata.message, "Third message");
    assert.equal(record.metadata.run_id, "second-run");
  });

  test("no inbox record for a session while a resume ticket answers for it", () => {
    const { dir, tracker, parker, written } = setup();
    parker.claimSession("agent:main:e2e-4", "ticket-1");
    replay(tracker, RECORDED.runs.failed_after_fallback.steps);
    assert.deepEqual(written, []);
    parker.releaseSession("agent:main:e2e-4");
    assert.deepEqual(inboxFiles(dir), []);
  });

  test("no inbox record for the run a ticket started, even after the ticket is answered", () => {
    const { tracker, parker, written } = setup();
    parker.claimRun("1ff4211d");
    replay(tracker, RECORDED.runs.failed_after_fallback.steps);
    assert.deepEqual(written, []);
  });
});
