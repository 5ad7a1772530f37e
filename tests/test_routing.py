"""Tests for the routing stage: features, classifiers, the router's rules, step failures."""

from __future__ import annotations

import builtins
import json
import socket
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard import routing
from agentguard.config import RoutingConfig
from agentguard.errors import BudgetExceeded, ConfigError
from agentguard.routing import (
    CLASSIFIER_REQUEST_OPTIONS,
    CascadeClassifier,
    Classification,
    Evidence,
    HeuristicClassifier,
    LearnedClassifier,
    LLMClassifier,
    PreviousOutcomeRule,
    RouteDecision,
    Router,
    RuleSet,
    ShortTaskRule,
    SignalRule,
    StepFeatures,
    build_classifier,
    check_step_failure,
    extract_features,
    load_model,
)

SMALL, MEDIUM, LARGE = "gpt-4o-mini", "gpt-4.1-mini", "gpt-4o"
THREE_TIERS = {"small": SMALL, "medium": MEDIUM, "large": LARGE}
SYSTEM = {"role": "system", "content": "You are a coding agent."}


def tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


TOOLS = [tool("read_file"), tool("run_tests")]


def user(text: str) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": text}]


EASY = user('Translate into Spanish: "Your order has shipped and should arrive soon."')
HARD = user(
    "Design a rate limiter that works across six stateless servers and compare two approaches."
)


def router(**config: Any) -> Router:
    # The router's own rules are tested with the heuristic classifier, whose labels are fixed
    # by hand-set rules; the learned scorer has its own tests (test_routing_learned.py).
    config.setdefault("tiers", THREE_TIERS)
    config.setdefault("classifier", "heuristic")
    return Router(RoutingConfig(**config))


def decide(
    r: Router, messages: list[dict[str, Any]], model: str = LARGE, **kwargs: Any
) -> RouteDecision:
    return r.decide(
        model=model, messages=messages, input_tokens=kwargs.pop("input_tokens", 200), **kwargs
    )


def features(text: str = "hello", **kwargs: Any) -> StepFeatures:
    return extract_features(
        user(text), kwargs.pop("tools", None), input_tokens=kwargs.pop("input_tokens", 50), **kwargs
    )


def constant(label: str, *, uncertain: bool = False, score: float = 0.5) -> routing.Classifier:
    def classify(_: StepFeatures) -> Classification:
        return Classification(label, score, 0.5, (f"always {label}",), uncertain)  # type: ignore[arg-type]

    return classify


# --------------------------------------------------------------------------- features


def test_features_read_latest_user_message_and_tool_batch() -> None:
    messages: list[dict[str, Any]] = [
        SYSTEM,
        {"role": "user", "content": "Earlier question about billing plans"},
        {"role": "assistant", "content": "Answered."},
        {"role": "user", "content": "Figure out why tests/test_api.py fails only in CI."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "run_tests", "arguments": "{}"},
                },
                {
                    "id": "2",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": "{}"},
                },
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "1",
            "content": 'Traceback (most recent call last):\n  File "a.py", line 1',
        },
        {"role": "tool", "tool_call_id": "2", "content": "print('hi')"},
    ]
    f = extract_features(messages, TOOLS, input_tokens=900, step_index=3, previous_outcome="ok")
    assert f.text.startswith("Figure out why")
    assert f.digesting_tool_result and f.tool_results_in_batch == 2
    assert f.has_tools and f.tools_offered == 2
    assert "debugging" in f.reasoning_signals
    assert "file_path" in f.code_signals and f.file_mentions == 1
    assert "stack_trace" in f.tool_code_signals
    assert (f.input_tokens, f.step_index, f.previous_outcome) == (900, 3, "ok")


def test_features_are_frozen_and_slotted() -> None:
    f = features()
    with pytest.raises(AttributeError):
        f.text = "changed"  # type: ignore[misc]
    assert not hasattr(f, "__dict__")


def test_features_content_parts_and_images() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Classify this picture: cat or dog? One word."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    f = extract_features(messages, None, input_tokens=10)
    assert f.has_images and not f.has_tools
    assert {"classify", "constrained_answer"} <= set(f.easy_signals)


@pytest.mark.parametrize(
    ("text", "field", "signal"),
    [
        ("```python\nx = 1\n```", "code_signals", "fenced_code"),
        ("--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n-a\n+b", "code_signals", "diff"),
        (
            'Exception in thread "main" java.lang.NullPointerException\n'
            "    at com.acme.App.run(App.java:3)",
            "code_signals",
            "stack_trace",
        ),
        ("Look at this:\ndef handler(event):\n    return event", "code_signals", "code_syntax"),
        ("Prove that the square root of 2 is irrational.", "math_signals", "proof"),
        ("What is the probability of two sixes?", "math_signals", "math_terms"),
        ("Find x with |x - 1| + |x + 2| = 5", "math_signals", "notation"),
        ("Plan the migration of our billing service.", "reasoning_signals", "planning"),
        ("Refactor the auth module.", "reasoning_signals", "refactoring"),
        ("Replace our homegrown HTTP wrapper with httpx.", "reasoning_signals", "refactoring"),
        ("Why does the cache miss after deploys?", "reasoning_signals", "explain_why"),
        ("How should we version the API?", "reasoning_signals", "open_question"),
        ("Reconcile these three accounts of the outage.", "reasoning_signals", "synthesis"),
        ("Extract the invoice number.", "easy_signals", "extract"),
        ("TL;DR of this abstract?", "easy_signals", "short_summary"),
        ("Is this spam? yes/no", "easy_signals", "constrained_answer"),
        ("How do I reset my password?", "easy_signals", "lookup"),
    ],
)
def test_signals(text: str, field: str, signal: str) -> None:
    assert signal in getattr(features(text), field)


@pytest.mark.parametrize(
    "text",
    [
        "Can I change my plan in the middle of a billing cycle?",  # plan as a noun
        "Does the Pro plan include the design templates?",  # design as a noun
        "Change the log level from DEBUG to INFO.",  # DEBUG is a log level
        "How do I add a teammate?",  # a how-to, not an open design question
    ],
)
def test_task_words_used_as_nouns_are_not_reasoning_signals(text: str) -> None:
    assert features(text).reasoning_signals == ()


def test_sentence_start_phrases_only_count_at_a_sentence_start() -> None:
    assert "classify" in features("Is this a refund request? Does this count?").easy_signals
    assert "classify" not in features("Why does this loop hang on Windows?").easy_signals
    assert "lookup" not in features("Tell me how do I feel about it").easy_signals
    assert "lookup" in features("Thanks. How do I export?").easy_signals


def test_pasted_payload_is_not_the_instruction() -> None:
    f = features(
        "Pick the department for this job posting: Engineering, Sales, Marketing.\n"
        '"We\'re hiring an engineer to design systems, debug production and plan the roadmap."'
    )
    assert f.reasoning_signals == ()
    assert "classify" in f.easy_signals
    f = features("Tag this issue with one label:\n\nTitle: Refactor the architecture section")
    assert f.reasoning_signals == ()


def test_long_text_is_clipped() -> None:
    f = features("Summarise this. " + "word " * 50_000)
    assert len(f.text) < 6_000
    assert "short_summary" in f.easy_signals


# --------------------------------------------------------------------------- heuristic classifier


def test_heuristic_labels_clear_cases() -> None:
    classify = HeuristicClassifier()
    easy = classify(extract_features(EASY, None, input_tokens=40))
    hard = classify(extract_features(HARD, None, input_tokens=40))
    assert easy.label == "easy" and hard.label == "hard"
    assert easy.score < hard.score
    assert 0 <= easy.score <= 1 and 0 <= hard.score <= 1
    assert easy.reasons and hard.reasons


def test_heuristic_flags_the_uncertain_band() -> None:
    classify = HeuristicClassifier(lambda f: Evidence(0.0, "nothing either way"))
    result = classify(features())
    assert result.score == 0.5 and result.label == "medium" and result.uncertain
    sure = HeuristicClassifier(lambda f: Evidence(-4.0, "very easy"))(features())
    assert sure.label == "easy" and not sure.uncertain and sure.confidence == 1.0


def test_heuristic_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="easy_below"):
        HeuristicClassifier(easy_below=0.7, hard_from=0.5)


def test_rules_compose_and_accept_plain_functions() -> None:
    def always_hard(f: StepFeatures) -> Evidence:
        return Evidence(3.0, "my rule")

    combined = PreviousOutcomeRule() + always_hard + ShortTaskRule()
    assert isinstance(combined, RuleSet)
    assert len(combined.rules) == 3  # flattened, not nested
    found = combined(features("Hi", previous_outcome="failed"))
    assert {e.reason for e in found} >= {"my rule", "previous step failed"}
    result = HeuristicClassifier(combined)(features("Hi"))
    assert result.label == "hard"
    assert any("my rule" in r for r in result.reasons)


def test_signal_rule_caps_piled_up_evidence() -> None:
    rule = SignalRule("easy_signals", first=-1.0, more=-1.0, cap=1.5)
    evidence = rule(
        features("Extract the names and convert them, just the list, as json. Summarise too.")
    )
    assert evidence is not None and evidence.weight == -1.5


def test_previous_failure_pushes_the_score_up() -> None:
    classify = HeuristicClassifier()
    text = "Rename the variable tmp to total."
    assert (
        classify(features(text, previous_outcome="failed")).score > classify(features(text)).score
    )


def test_tier_index_of_labels() -> None:
    def label(name: str) -> Classification:
        return Classification(name, 0.5, 0.5)  # type: ignore[arg-type]

    assert [label("easy").tier_index(n) for n in (1, 2, 3)] == [0, 0, 0]
    assert [label("hard").tier_index(n) for n in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert [label("medium").tier_index(n) for n in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]


# --------------------------------------------------------------------------- LLM and cascade


class FakeAsk:
    """Stands in for the pipeline's small-model call."""

    def __init__(self, answer: str = "HARD") -> None:
        self.answer = answer
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.calls.append(messages)
        return self.answer


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("EASY", "easy"),
        ("hard", "hard"),
        ("  **HARD**\n", "hard"),
        ("Answer: easy.", "easy"),
        ("Complex", "hard"),
        ("simple", "easy"),
        ("", None),
        ("maybe?", None),
    ],
)
def test_llm_answer_parsing(answer: str, verdict: str | None) -> None:
    assert LLMClassifier.parse(answer) == verdict


def test_llm_classifier_prompt_and_result() -> None:
    ask = FakeAsk("EASY")
    result = LLMClassifier(ask)(features("Extract the total from this invoice. " + "x" * 10_000))
    assert result.label == "easy" and result.source == "llm" and not result.uncertain
    (messages,) = ask.calls
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "EASY or HARD" in messages[0]["content"]
    assert len(messages[1]["content"]) < 2_500  # the prompt stays short whatever the task size
    assert (
        CLASSIFIER_REQUEST_OPTIONS["temperature"] == 0
        and CLASSIFIER_REQUEST_OPTIONS["max_tokens"] <= 5
    )


def test_llm_unreadable_answer_is_hard_and_uncertain() -> None:
    result = LLMClassifier(FakeAsk("I think it depends"))(features())
    assert result.label == "hard" and result.uncertain and result.confidence == 0


def test_cascade_asks_the_llm_only_in_the_uncertain_band() -> None:
    ask = FakeAsk("EASY")
    cascade = CascadeClassifier(constant("hard", uncertain=False), LLMClassifier(ask))
    assert cascade(features()).label == "hard"
    assert ask.calls == []

    cascade = CascadeClassifier(constant("medium", uncertain=True), LLMClassifier(ask))
    result = cascade(features())
    assert len(ask.calls) == 1
    assert result.label == "easy" and result.source == "cascade"
    assert "heuristic unsure" in result.reasons[0]


def test_cascade_with_the_real_heuristic() -> None:
    ask = FakeAsk("HARD")
    cascade = CascadeClassifier(HeuristicClassifier(), LLMClassifier(ask))
    cascade(extract_features(EASY, None, input_tokens=40))
    cascade(extract_features(HARD, None, input_tokens=40))
    assert ask.calls == []  # both clear-cut
    unsure = HeuristicClassifier()(
        features("Switch the workflow to Node 20 please, it uses Node 18 now.")
    )
    assert unsure.uncertain
    assert (
        cascade(features("Switch the workflow to Node 20 please, it uses Node 18 now.")).label
        == "hard"
    )
    assert len(ask.calls) == 1


def test_cascade_keeps_the_heuristic_when_the_llm_fails() -> None:
    def broken(_: list[dict[str, Any]]) -> str:
        raise TimeoutError("small model timed out")

    result = CascadeClassifier(constant("medium", uncertain=True), LLMClassifier(broken))(
        features()
    )
    assert result.label == "medium"
    assert any("TimeoutError" in r for r in result.reasons)

    unreadable = CascadeClassifier(constant("easy", uncertain=True), LLMClassifier(FakeAsk("??")))(
        features()
    )
    assert unreadable.label == "easy"


def test_cascade_lets_guard_errors_through() -> None:
    def over_budget(_: list[dict[str, Any]]) -> str:
        raise BudgetExceeded(
            "budget 'research' spent",
            key="research",
            spent_usd=Decimal("5"),
            limit_usd=Decimal("5"),
            needed_usd=Decimal("0.01"),
            resets_at=None,
            session_id="s1",
        )

    with pytest.raises(BudgetExceeded):
        CascadeClassifier(constant("medium", uncertain=True), LLMClassifier(over_budget))(
            features()
        )


def test_build_classifier() -> None:
    assert isinstance(build_classifier("learned"), LearnedClassifier)
    assert isinstance(build_classifier("heuristic"), HeuristicClassifier)
    assert isinstance(build_classifier("llm", ask=FakeAsk()), LLMClassifier)
    assert isinstance(build_classifier("cascade", ask=FakeAsk()), CascadeClassifier)
    with pytest.raises(ConfigError, match="cascade"):
        build_classifier("cascade")
    with pytest.raises(ConfigError, match="unknown"):
        build_classifier("magic")


def test_router_builds_the_configured_classifier() -> None:
    # The learned scorer is the default; the heuristic stays selectable.
    default = Router(RoutingConfig(tiers=THREE_TIERS))
    assert isinstance(default.classifier, LearnedClassifier)
    assert default.classifier.threshold == load_model().threshold
    heuristic = Router(RoutingConfig(tiers=THREE_TIERS, classifier="heuristic"))
    assert isinstance(heuristic.classifier, HeuristicClassifier)
    with pytest.raises(ConfigError):
        Router(RoutingConfig(tiers=THREE_TIERS, classifier="llm"))
    ask = FakeAsk("EASY")
    r = Router(RoutingConfig(tiers=THREE_TIERS, classifier="llm"), ask=ask)
    assert decide(r, HARD).model == SMALL and len(ask.calls) == 1


# --------------------------------------------------------------------------- router rules


def test_routing_off_passes_the_model_through() -> None:
    r = Router(RoutingConfig())
    decision = decide(r, HARD, model="o3")
    assert decision.model == "o3" and decision.tier is None
    assert decision.reasons == ("routing off: no tiers configured",)
    assert r.escalate(decision) is None and r.cheaper_tiers(decision) == []


def test_easy_step_goes_to_the_cheapest_tier() -> None:
    decision = decide(router(), EASY)
    assert (decision.model, decision.tier, decision.requested_model) == (SMALL, "small", LARGE)
    assert decision.downgraded and decision.features is not None and decision.score is not None


def test_hard_step_keeps_the_callers_model() -> None:
    decision = decide(router(), HARD)
    assert (decision.model, decision.tier) == (LARGE, "large")
    assert not decision.downgraded


def test_medium_label_picks_the_middle_tier() -> None:
    r = Router(RoutingConfig(tiers=THREE_TIERS), classifier=constant("medium"))
    assert decide(r, EASY).tier == "medium"


def test_callers_model_is_the_ceiling() -> None:
    decision = decide(router(), HARD, model=MEDIUM)
    assert decision.model == MEDIUM
    assert any("capped at the caller's model" in r for r in decision.reasons)
    assert decision.ceiling == 1


def test_allow_upgrade_lifts_the_ceiling() -> None:
    decision = decide(router(allow_upgrade=True), HARD, model=SMALL)
    assert decision.model == LARGE and decision.ceiling == 2


def test_caller_model_outside_the_tiers_ranks_on_top() -> None:
    r = router()
    hard = decide(r, HARD, model="o3")
    assert hard.model == "o3" and hard.tier is None
    assert hard.ladder == (SMALL, MEDIUM, LARGE, "o3")
    easy = decide(r, EASY, model="o3")
    assert easy.model == SMALL
    assert r.cheaper_tiers(hard) == [LARGE, MEDIUM, SMALL]


def test_force_model_pins_the_call() -> None:
    r = router(pressure=[(0.5, "small")])
    decision = decide(r, EASY, force_model="o3", remaining_fraction=0.01)
    assert decision.model == "o3" and decision.forced
    assert decision.reasons == ("forced to o3 by the call's force_model",)
    assert r.escalate(decision) is None and r.cheaper_tiers(decision) == []

    configured = router(force_model=MEDIUM)
    decision = decide(configured, HARD)
    assert decision.model == MEDIUM and decision.tier == "medium"
    assert "routing.force_model" in decision.reasons[0]
    assert decide(configured, HARD, force_model=SMALL).model == SMALL  # the call beats the config


@pytest.mark.parametrize(
    ("remaining", "model"),
    [
        (None, LARGE),
        (0.9, LARGE),
        (0.20, LARGE),
        (0.19, MEDIUM),
        (0.05, MEDIUM),
        (0.049, SMALL),
        (0.0, SMALL),
    ],
)
def test_budget_pressure_caps_the_tier(remaining: float | None, model: str) -> None:
    r = router(pressure=[(0.20, "medium"), (0.05, "small")])
    decision = decide(r, HARD, remaining_fraction=remaining)
    assert decision.model == model
    if model != LARGE:
        assert any("budget pressure" in reason for reason in decision.reasons)


def test_pressure_order_in_config_does_not_matter() -> None:
    r = router(pressure=[(0.05, "small"), (0.20, "medium")])
    assert decide(r, HARD, remaining_fraction=0.01).model == SMALL


def test_escalation_climbs_to_the_ceiling_then_stops() -> None:
    r = Router(RoutingConfig(tiers=THREE_TIERS), classifier=constant("easy"))
    decision = decide(r, EASY)
    assert decision.model == SMALL
    up = r.escalate(decision, "invalid JSON arguments for tool 'read_file'")
    assert up is not None and (up.model, up.tier) == (MEDIUM, "medium")
    assert (
        up.reasons[-1]
        == f"escalated from {SMALL} to {MEDIUM}: invalid JSON arguments for tool 'read_file'"
    )
    assert up.escalated_from == (SMALL,)
    top = r.escalate(up)
    assert top is not None and top.model == LARGE and top.escalated_from == (SMALL, MEDIUM)
    assert r.escalate(top) is None


def test_escalation_stops_at_the_callers_model() -> None:
    r = Router(RoutingConfig(tiers=THREE_TIERS), classifier=constant("easy"))
    decision = decide(r, EASY, model=MEDIUM)
    up = r.escalate(decision)
    assert up is not None and up.model == MEDIUM
    assert r.escalate(up) is None


def test_escalation_respects_pressure_and_config() -> None:
    r = Router(
        RoutingConfig(tiers=THREE_TIERS, pressure=[(0.05, "small")]), classifier=constant("easy")
    )
    assert r.escalate(decide(r, EASY, remaining_fraction=0.01)) is None
    off = Router(RoutingConfig(tiers=THREE_TIERS, escalate=False), classifier=constant("easy"))
    assert off.escalate(decide(off, EASY)) is None


def test_cheaper_tiers_nearest_first() -> None:
    r = router()
    assert r.cheaper_tiers(decide(r, HARD)) == [MEDIUM, SMALL]
    assert r.cheaper_tiers(decide(r, EASY)) == []


def test_duplicate_tier_models_are_one_rung() -> None:
    r = Router(
        RoutingConfig(tiers={"small": SMALL, "cheap": SMALL, "large": LARGE}),
        classifier=constant("easy"),
    )
    decision = decide(r, EASY)
    assert decision.ladder == (SMALL, LARGE) and decision.tier == "small"
    up = r.escalate(decision)
    assert up is not None and up.model == LARGE


def test_decision_reasons_and_log_fields() -> None:
    decision = decide(router(), EASY)
    assert decision.reasons and all(isinstance(r, str) and r for r in decision.reasons)
    assert decision.reasons[0].startswith("easy step")
    fields = decision.log_fields()
    assert fields["model"] == SMALL and fields["label"] == "easy" and fields["reasons"]
    json.dumps(fields)  # loggable as JSON


def test_decide_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("routing must not do I/O")

    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(builtins, "open", forbidden)
    r = router(pressure=[(0.2, "medium")])
    decision = decide(r, HARD, tools=TOOLS, remaining_fraction=0.1, previous_outcome="failed")
    assert decision.model == MEDIUM
    assert r.escalate(decide(r, EASY)) is not None


# --------------------------------------------------------------------------- properties

_model_names = st.lists(
    st.sampled_from([f"model-{i}" for i in range(8)]), min_size=1, max_size=5, unique=True
)
_texts = st.text(min_size=0, max_size=300)


@settings(max_examples=150, deadline=None)
@given(
    models=_model_names,
    caller_position=st.integers(min_value=0, max_value=5),
    text=_texts,
    allow_upgrade=st.booleans(),
    remaining=st.none() | st.floats(min_value=0, max_value=1),
    tokens=st.integers(min_value=0, max_value=200_000),
)
def test_router_invariants(
    models: list[str],
    caller_position: int,
    text: str,
    allow_upgrade: bool,
    remaining: float | None,
    tokens: int,
) -> None:
    tiers = {f"tier{i}": m for i, m in enumerate(models)}
    pressure = [(0.1, "tier0")]
    r = Router(RoutingConfig(tiers=tiers, pressure=pressure, allow_upgrade=allow_upgrade))
    caller = models[caller_position] if caller_position < len(models) else "outside-model"
    decision = r.decide(
        model=caller, messages=user(text), input_tokens=tokens, remaining_fraction=remaining
    )

    assert decision.reasons and decision.score is not None and 0 <= decision.score <= 1
    assert decision.model in decision.ladder
    index = decision.ladder.index(decision.model)
    assert decision.ceiling is not None and index <= decision.ceiling
    if not allow_upgrade:
        assert index <= decision.ladder.index(caller)
    if remaining is not None and remaining < 0.1:
        assert decision.model == models[0]
    cheaper = r.cheaper_tiers(decision)
    assert all(decision.ladder.index(m) < index for m in cheaper)
    assert cheaper == sorted(cheaper, key=decision.ladder.index, reverse=True)
    # Escalation climbs one rung at a time and ends at the ceiling.
    steps = 0
    current: RouteDecision | None = decision
    while current is not None:
        last, current = current, r.escalate(current)
        steps += 1
        assert steps <= len(decision.ladder)
    assert last.ladder.index(last.model) == decision.ceiling


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=2000), tool_output=st.text(max_size=2000))
def test_feature_extraction_never_fails(text: str, tool_output: str) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": text},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "1", "content": tool_output},
    ]
    f = extract_features(messages, TOOLS, input_tokens=1)
    assert f.digesting_tool_result
    result = HeuristicClassifier()(f)
    assert result.label in ("easy", "medium", "hard") and result.reasons


# --------------------------------------------------------------------------- step failures


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish_reason,
            }
        ],
    }


def call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (completion({"content": "The total is $1,245.00."}), None),
        (
            completion(
                {"content": None, "tool_calls": [call("read_file", '{"path": "a.py"}')]},
                "tool_calls",
            ),
            None,
        ),
        (completion({"content": None, "tool_calls": [call("run_tests", "")]}, "tool_calls"), None),
        (
            completion(
                {
                    "content": "I can't reproduce it yet; the test passes locally, so next I will "
                    + "x" * 400
                }
            ),
            None,
        ),
        (
            completion({"content": None, "tool_calls": [call("read_file", '{"path": "a.py"')]}),
            "invalid JSON",
        ),
        (
            completion({"content": None, "tool_calls": [call("read_file", '["a.py"]')]}),
            "not an object",
        ),
        (
            completion({"content": None, "tool_calls": [call("delete_repo", "{}")]}),
            "unknown tool 'delete_repo'",
        ),
        (
            completion({"content": None, "function_call": {"name": "nope", "arguments": "{}"}}),
            "unknown tool",
        ),
        (completion({"content": ""}), "empty answer"),
        (completion({"content": "   \n"}), "empty answer"),
        (completion({"content": None}), "empty answer"),
        ({"choices": []}, "empty answer"),
        ({}, "empty answer"),
        (completion({"content": None, "refusal": "I can't help with that."}), "refusal"),
        (completion({"content": "I'm sorry, but I can't help with that."}), "refusal"),
        (completion({"content": "Sorry, I cannot assist with this request."}), "refusal"),
        (completion({"content": "As an AI language model, I cannot provide that."}), "refusal"),
        (completion({"content": ""}, "content_filter"), "refusal"),
    ],
)
def test_check_step_failure(body: dict[str, Any], expected: str | None) -> None:
    result = check_step_failure(body, TOOLS)
    if expected is None:
        assert result is None
    else:
        assert result is not None and expected in result


def test_check_step_failure_without_tools_offered() -> None:
    body = completion({"content": None, "tool_calls": [call("read_file", "{}")]})
    result = check_step_failure(body, None)
    assert result is not None and "offered: none" in result


def test_check_step_failure_names_the_bad_choice() -> None:
    body = {
        "choices": [
            {"message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"},
            {"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"},
        ]
    }
    assert check_step_failure(body, TOOLS) == "choice 1: empty answer: no content and no tool calls"


def test_all_names_exist() -> None:
    for name in routing.__all__:
        assert hasattr(routing, name), name
