import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { afterEach, describe, test } from "node:test";

import { ensurePrivateDir, writePrivateJson } from "../lib/files.js";
import { TicketService, ticketProblem } from "../lib/outbox.js";
import { Parker } from "../lib/parker.js";
import { RunTracker } from "../lib/tracker.js";
import { memoryLogger, modeOf, tempParking, until } from "./helpers.js";

const SESSION_KEY = "agent:main:telegram:direct:42";

/** What a continued run does, as OpenClaw would report it to the plugin. */
const scripts = {
  finishes(tracker, runId, params) {
    tracker.noteAgentEvent(lifecycle(runId, 1, { phase: "start" }));
    tracker.noteAgentEnd(
      {
        messages: [
          { role: "user", content: params.message },
          { role: "assistant", content: [{ type: "text", text: "Paris." }], stopReason: "stop" },
        ],
        success: true,
      },
      { runId, sessionKey: params.sessionKey, agentId: "main" },
    );
    tracker.noteAgentEvent(
      lifecycle(runId, 2, { phase: "end", stopReason: "stop", terminalReply: { text: "Paris." } }),
    );
  },
  refusedAgain(tracker, runId, params) {
    const message =
      "429 Budget exceeded for key sk-...0001; resets in 60s; Retry-After: 60 seconds";
    tracker.noteAgentEnd(
      {
        messages: [
          { role: "user", content: params.message },
          {
            role: "assistant",
            content: [],
            stopReason: "error",
            errorCode: "budget_exceeded",
            errorType: "budget_exceeded",
            errorMessage: message,
          },
        ],
        success: true,
      },
      { runId, sessionKey: params.sessionKey, agentId: "main" },
    );
    tracker.noteAgentEvent(
      lifecycle(runId, 2, {
        phase: "error",
        error: `All models failed (1): sim/gpt-4o-mini: ${message} (rate_limit)`,
        errorObservation: { failoverReason: "rate_limit" },
      }),
    );
  },
  failsOtherwise(tracker, runId) {
    tracker.noteAgentEvent(lifecycle(runId, 2, { phase: "error", error: "tool crashed" }));
  },
  silent() {},
};

function lifecycle(runId, seq, data) {
  return { runId, seq, stream: "lifecycle", sessionKey: SESSION_KEY, agentId: "main", data };
}

/**
 * OpenClaw's `api.runtime` as the service uses it: `subagent.run` starts the scripted run (its
 * run id is the idempotency key, as in OpenClaw), `subagent.waitForRun` reports its end.
 */
function fakeRuntime(tracker, script, { waitResult = null, runError = null } = {}) {
  const calls = [];
  return {
    calls,
    subagent: {
      async run(params) {
        calls.push(params);
        if (runError) throw new Error(runError);
        const runId = params.idempotencyKey;
        setTimeout(() => script(tracker, runId, params), 5);
        return { runId, sessionKey: params.sessionKey };
      },
      async waitForRun({ runId, timeoutMs }) {
        if (waitResult) return { runId, ...waitResult };
        // Short waits: a test must not keep timers alive long after it ends.
        const run = await tracker.waitTerminal(runId, Math.min(timeoutMs, 300));
        if (!run) return { runId, status: "timeout" };
        return {
          runId,
          status: run.terminal.outcome === "ok" ? "ok" : "error",
          error: run.terminal.error,
        };
      },
    },
  };
}

const services = [];
afterEach(() => {
  while (services.length) services.pop().stop();
});

function setup({
  script = scripts.finishes,
  config: overrides = {},
  runtime: runtimeOptions,
} = {}) {
  const { dir, config } = tempParking({ pollIntervalMs: 50, ...overrides });
  const tracker = new RunTracker();
  const logger = memoryLogger();
  const parker = new Parker({ config: () => config, logger: () => logger, tracker });
  tracker.onTerminal((run) => parker.consider(run));
  const runtime = fakeRuntime(tracker, script, runtimeOptions);
  const service = new TicketService({
    config: () => config,
    logger: () => logger,
    runtime,
    tracker,
    parker,
    settleMs: 50,
  });
  services.push(service);
  const paths = {
    outbox: ensurePrivateDir(path.join(dir, "outbox")),
    acks: ensurePrivateDir(path.join(dir, "acks")),
    started: ensurePrivateDir(path.join(dir, "openclaw-plugin", "started")),
    inbox: path.join(dir, "inbox"),
  };
  return { dir, config, tracker, parker, logger, runtime, service, paths };
}

function writeTicket(outbox, overrides = {}) {
  const ticket = {
    schema_version: 1,
    ticket_id: `${SESSION_KEY}.0.ab12cd34`,
    session_id: SESSION_KEY,
    session_key: SESSION_KEY,
    message: "What is the capital of France?",
    attempt: 1,
    written_at: new Date().toISOString(),
    ...overrides,
  };
  writePrivateJson(outbox, `${ticket.ticket_id}.json`, ticket);
  return ticket;
}

const readAck = (acks, ticketId) =>
  JSON.parse(fs.readFileSync(path.join(acks, `${ticketId}.json`), "utf8"));
const exists = (...parts) => fs.existsSync(path.join(...parts));

describe("answering resume tickets", () => {
  test("continues the same session with the ticket's message, then acks resumed", async () => {
    const { runtime, service, paths } = setup();
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    assert.deepEqual(runtime.calls, [
      {
        sessionKey: SESSION_KEY,
        message: "What is the capital of France?",
        idempotencyKey: ticket.ticket_id,
        deliver: false,
      },
    ]);
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.schema_version, 1);
    assert.equal(ack.ticket_id, ticket.ticket_id);
    assert.equal(ack.session_id, SESSION_KEY);
    assert.equal(ack.status, "resumed");
    assert.match(ack.message, /finished: Paris\./);
    assert.equal(ack.resume_at, null);
    assert.equal(ack.run_id, ticket.ticket_id);
    assert.equal(modeOf(path.join(paths.acks, `${ticket.ticket_id}.json`)), 0o600);
    assert.ok(!exists(paths.outbox, `${ticket.ticket_id}.json`), "the ticket is removed");
    assert.deepEqual(fs.readdirSync(paths.started), [], "the started marker is removed");
  });

  test("a run refused again acks rate_limited with its reset time; no inbox record", async () => {
    const { runtime, service, paths } = setup({ script: scripts.refusedAgain });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    const before = Date.now();
    await service.scan();
    assert.equal(runtime.calls.length, 1);
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "rate_limited");
    assert.equal(ack.kind, "budget_window");
    assert.match(ack.message, /^budget_window: 429 Budget exceeded/);
    const resumeAt = Date.parse(ack.resume_at);
    assert.ok(resumeAt >= before + 60_000 && resumeAt <= Date.now() + 60_000, ack.resume_at);
    assert.ok(!exists(paths.inbox) || fs.readdirSync(paths.inbox).length === 0);
  });

  test("a run that fails for another reason acks error", async () => {
    const { service, paths } = setup({ script: scripts.failsOtherwise });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "error");
    assert.match(ack.message, /tool crashed/);
  });

  test("a session that cannot be continued acks error", async () => {
    const { service, paths } = setup({ runtime: { runError: "unknown session" } });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "error");
    assert.match(ack.message, /could not continue session .*unknown session/);
    assert.equal(ack.run_id, null);
    assert.deepEqual(fs.readdirSync(paths.started), []);
  });

  test("known only through waitForRun, the outcome still comes back", async () => {
    const { service, paths } = setup({
      script: scripts.silent,
      runtime: { waitResult: { status: "ok", terminalReply: { text: "Lyon." } } },
    });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "resumed");
    assert.match(ack.message, /Lyon\./);
  });

  test("a 429 known only through waitForRun is rate_limited", async () => {
    const { service, paths } = setup({
      script: scripts.silent,
      runtime: {
        waitResult: { status: "error", error: "429 rate limit reached; try again in 30s" },
      },
    });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "rate_limited");
    assert.ok(ack.resume_at);
  });

  test("a run that does not finish in time acks error", async () => {
    const { service, paths } = setup({
      script: scripts.silent,
      config: { resumeTimeoutSeconds: 0.2 },
    });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    await service.scan();
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "error");
    assert.match(ack.message, /had not finished within resumeTimeoutSeconds=0.2/);
  });
});

describe("a ticket runs once", () => {
  test("a ticket already acked (a restart after answering) is not run again", async () => {
    const { runtime, service, paths } = setup();
    const ticket = writeTicket(paths.outbox);
    writePrivateJson(paths.acks, `${ticket.ticket_id}.json`, { status: "resumed" });
    service.stopped = false;
    await service.scan();
    assert.deepEqual(runtime.calls, []);
    assert.ok(!exists(paths.outbox, `${ticket.ticket_id}.json`));
    assert.equal(readAck(paths.acks, ticket.ticket_id).status, "resumed");
  });

  test("a ticket started before a restart is not sent again; its run is awaited", async () => {
    const { runtime, service, paths, tracker } = setup();
    const ticket = writeTicket(paths.outbox);
    writePrivateJson(paths.started, `${ticket.ticket_id}.json`, {
      ticket_id: ticket.ticket_id,
      session_key: SESSION_KEY,
      run_id: "run-before-restart",
      started_at: new Date().toISOString(),
    });
    service.stopped = false;
    const answering = service.scan();
    setTimeout(
      () =>
        scripts.finishes(tracker, "run-before-restart", { sessionKey: SESSION_KEY, message: "x" }),
      20,
    );
    await answering;
    assert.deepEqual(runtime.calls, []);
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "resumed");
    assert.equal(ack.run_id, "run-before-restart");
  });

  test("seen twice at once (watch and poll), it runs once", async () => {
    const { runtime, service, paths } = setup();
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    const name = `${ticket.ticket_id}.json`;
    await Promise.all([service.handle(name), service.handle(name), service.scan()]);
    assert.equal(runtime.calls.length, 1);
  });

  test("a ticket past maxAttempts is refused, not sent", async () => {
    const { runtime, service, paths } = setup({ config: { maxAttempts: 2 } });
    const ticket = writeTicket(paths.outbox, { attempt: 3 });
    service.stopped = false;
    await service.scan();
    assert.deepEqual(runtime.calls, []);
    const ack = readAck(paths.acks, ticket.ticket_id);
    assert.equal(ack.status, "error");
    assert.match(ack.message, /past the plugin's maxAttempts=2/);
  });

  test("a ticket agentguard withdrew while it ran gets no ack", async () => {
    const { service, paths, tracker } = setup({ script: scripts.silent });
    const ticket = writeTicket(paths.outbox);
    service.stopped = false;
    const answering = service.scan();
    await until(() => fs.readdirSync(paths.started).length === 1);
    fs.rmSync(path.join(paths.outbox, `${ticket.ticket_id}.json`));
    scripts.finishes(tracker, ticket.ticket_id, { sessionKey: SESSION_KEY, message: "x" });
    await answering;
    assert.deepEqual(fs.readdirSync(paths.acks), []);
    assert.deepEqual(fs.readdirSync(paths.started), []);
  });
});

describe("bad tickets", () => {
  test("invalid tickets are answered error without running", async () => {
    const { runtime, service, paths } = setup();
    const bad = [
      writeTicket(paths.outbox, { ticket_id: "t-version", schema_version: 2 }),
      writeTicket(paths.outbox, { ticket_id: "t-key", session_key: "" }),
      writeTicket(paths.outbox, { ticket_id: "t-attempt", attempt: 0 }),
    ];
    fs.writeFileSync(path.join(paths.outbox, "t-json.json"), "{not json", { mode: 0o600 });
    service.stopped = false;
    await service.scan();
    assert.deepEqual(runtime.calls, []);
    for (const { ticket_id } of bad) {
      const ack = readAck(paths.acks, ticket_id);
      assert.equal(ack.status, "error");
      assert.match(ack.message, /^invalid ticket: /);
    }
    assert.match(readAck(paths.acks, "t-json").message, /^unreadable ticket/);
    assert.deepEqual(fs.readdirSync(paths.outbox), []);
  });

  test("a file whose name is not a ticket id is left alone", async () => {
    const { runtime, service, paths, logger } = setup();
    fs.writeFileSync(path.join(paths.outbox, "bad name!.json"), "{}", { mode: 0o600 });
    fs.writeFileSync(path.join(paths.outbox, ".t.json.tmp"), "{}", { mode: 0o600 });
    service.stopped = false;
    await service.scan();
    await service.scan();
    assert.deepEqual(runtime.calls, []);
    assert.deepEqual(fs.readdirSync(paths.acks), []);
    assert.equal(logger.lines.filter((line) => line.includes("bad name!")).length, 1);
  });

  test("ticketProblem names what is wrong", () => {
    assert.equal(ticketProblem(null, "t"), "not a JSON object");
    assert.match(
      ticketProblem(
        { schema_version: 1, ticket_id: "u", session_key: "k", message: "m", attempt: 1 },
        "t",
      ),
      /does not match its file name/,
    );
    assert.equal(
      ticketProblem(
        { schema_version: 1, ticket_id: "t", session_key: "k", message: "m", attempt: 1 },
        "t",
      ),
      null,
    );
  });
});

describe("watching the outbox", () => {
  test("a ticket dropped after start is answered (watch or poll)", async () => {
    const { service, paths } = setup();
    service.start();
    const ticket = writeTicket(paths.outbox);
    await until(() => exists(paths.acks, `${ticket.ticket_id}.json`));
    assert.equal(readAck(paths.acks, ticket.ticket_id).status, "resumed");
  });

  test("start makes the directories private; stop ends watching", async () => {
    const { service, paths, runtime } = setup();
    service.start();
    for (const directory of [paths.outbox, paths.acks, paths.started]) {
      assert.equal(modeOf(directory), 0o700);
    }
    service.stop();
    writeTicket(paths.outbox);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(runtime.calls, []);
  });
});
