// Prints, as a JSON array, the parked records the plugin builds for each kind of limit and for
// awkward session keys, so run.sh can check them against agentguard's own model.
import { resolveConfig } from "../lib/config.js";
import { buildParkedRecord } from "../lib/record.js";

const { config } = resolveConfig({ parkingDir: "/tmp/unused" });
const run = {
  sessionKey: "agent:main:telegram:direct:42",
  runId: "run-1",
  agentId: "main",
  sessionId: "sess-1",
  provider: "sim",
  model: "gpt-4o-mini",
  userText: "What is the capital of France?",
};
const verdicts = [
  {
    kind: "budget_window",
    status: 429,
    errorType: "budget_exceeded",
    errorCode: "429",
    message: "429 Budget exceeded: resets in 88s",
  },
  {
    kind: "budget_window",
    status: 422,
    errorType: "budget_exceeded",
    errorCode: "422",
    message: "422 Budget has been exceeded!",
  },
  {
    kind: "rate_limit",
    status: 429,
    errorType: null,
    errorCode: "rate_limit_exceeded",
    message: "Please try again in 120ms.",
  },
  {
    kind: "quota_exhausted",
    status: 429,
    errorType: "insufficient_quota",
    errorCode: "insufficient_quota",
    message: "You exceeded your current quota",
  },
];
const records = verdicts.map((verdict) => buildParkedRecord(run, verdict, config));
for (const sessionKey of [
  "agent:main:slack/#general thread",
  `agent:main:${"x".repeat(400)}`,
  "..",
  "",
]) {
  records.push(
    buildParkedRecord({ ...run, sessionKey, userText: null, model: null }, verdicts[0], config),
  );
}
console.log(JSON.stringify(records));
