"""The learned step scorer, the routing threshold and its calibration, and one decision path
for ``guard.route()`` and the pipeline."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from agentguard.cli import app
from agentguard.config import RoutingConfig
from agentguard.guard import Guard
from agentguard.log import configure_logging
from agentguard.routing import (
    CascadeClassifier,
    LearnedClassifier,
    LLMClassifier,
    RouteDecision,
    Router,
    ScorerModel,
    StepFeatures,
    build_classifier,
    extract_features,
    load_model,
)
from agentguard.routing.calibrate import calibrate_threshold, read_route_scores
from agentguard.routing.learned import step_vector
from agentguard.sim import SimServer

TIERS = {"small": "gpt-4o-mini", "large": "gpt-4o"}
SMALL, LARGE = TIERS["small"], TIERS["large"]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


EASY_STEPS = [
    user("What's the capital of New Zealand?"),
    user('Classify the sentiment of this review as positive or negative: "Love it."'),
    user("Convert these durations to seconds: 1h 30m, 45m, 90s"),
]
HARD_STEPS = [
    user(
        "Prove that there are infinitely many primes p such that p + 2 is not prime, and "
        "derive a bound on their density. Show every step of the argument."
    ),
    user(
        "Our job scheduler fires the same job twice every few days. We run two replicas "
        "behind a leader election. Find the race condition and design a fix across "
        "scheduler/lease.py, scheduler/worker.py and scheduler/store.py."
    ),
]


def features(messages: list[dict[str, Any]], **kwargs: Any) -> StepFeatures:
    return extract_features(messages, kwargs.pop("tools", None), input_tokens=100, **kwargs)


def decide(router: Router, messages: list[dict[str, Any]], **kwargs: Any) -> RouteDecision:
    return router.decide(model=LARGE, messages=messages, input_tokens=100, **kwargs)


# --------------------------------------------------------------------------- the scorer


def test_the_shipped_model_is_small_and_says_where_it_came_from() -> None:
    model = load_model()
    assert 0 < model.threshold < 1
    assert 1_000 < len(model.weights) <= 20_000
    routellm = model.manifest["sources"]["routellm"]
    assert routellm["licence"] == "Apache-2.0" and len(routellm["commit"]) == 40
    assert all(len(digest) == 64 for digest in routellm["files_sha256"].values())
    assert model.manifest["sources"]["agent_steps"]["split_used"] == "dev"


def test_the_shipped_recipe_is_the_one_its_cross_validation_preferred() -> None:
    manifest = load_model().manifest
    candidates = manifest["recipe_choice"]["candidates"]
    assert candidates and all(0.5 < score < 1 for score in candidates.values())
    assert manifest["recipe"] == max(candidates, key=candidates.__getitem__)


def test_learned_is_built_when_configured() -> None:
    router = Router(RoutingConfig(tiers=TIERS, classifier="learned"))
    assert isinstance(router.classifier, LearnedClassifier)
    decision = decide(router, EASY_STEPS[0])
    assert decision.classification is not None
    assert decision.classification.source == "learned"


@pytest.mark.parametrize("messages", EASY_STEPS)
def test_clearly_easy_steps_go_small(messages: list[dict[str, Any]]) -> None:
    decision = decide(Router(RoutingConfig(tiers=TIERS, classifier="learned")), messages)
    assert decision.model == SMALL, decision.reasons


@pytest.mark.parametrize("messages", HARD_STEPS)
def test_clearly_hard_steps_keep_the_large_model(messages: list[dict[str, Any]]) -> None:
    decision = decide(Router(RoutingConfig(tiers=TIERS, classifier="learned")), messages)
    assert decision.model == LARGE, decision.reasons


def test_score_is_a_probability_that_orders_steps() -> None:
    classifier = LearnedClassifier()
    easy = [classifier(features(m)).score for m in EASY_STEPS]
    hard = [classifier(features(m)).score for m in HARD_STEPS]
    assert all(0 <= s <= 1 for s in easy + hard)
    assert max(easy) < min(hard)


def test_a_failed_previous_step_raises_the_score() -> None:
    classifier = LearnedClassifier()
    step = EASY_STEPS[2]
    plain = classifier(features(step)).score
    after_failure = classifier(features(step, previous_outcome="failed"))
    after_escalation = classifier(features(step, previous_outcome="escalated")).score
    assert plain < after_escalation < after_failure.score
    assert after_failure.reasons[0].startswith("previous step failed")


def test_a_failing_tool_result_raises_the_score() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Run the tests and tell me what you see."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "run", "arguments": "{}"}}
            ],
        },
    ]
    passing = [*messages, {"role": "tool", "tool_call_id": "c1", "content": "12 passed in 0.4s"}]
    failing = [
        *messages,
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": 'Traceback (most recent call last):\n  File "app/db.py", line 9\n'
            "KeyError: 'user_id'\nFAILED tests/test_db.py::test_load - KeyError\n1 failed",
        },
    ]
    model = load_model()
    assert model.score(features(failing)) > model.score(features(passing))


def test_the_threshold_decides() -> None:
    step = EASY_STEPS[1]
    score = LearnedClassifier()(features(step)).score
    below = Router(
        RoutingConfig(tiers=TIERS, classifier="learned", threshold=max(0.0001, score / 2))
    )
    above = Router(
        RoutingConfig(tiers=TIERS, classifier="learned", threshold=min(0.9999, (score + 1) / 2))
    )
    assert decide(below, step).model == LARGE
    assert decide(above, step).model == SMALL


def test_with_no_signal_the_decision_follows_the_prior_and_the_threshold() -> None:
    # A step with no text: only the model's prior speaks. Which tier it gets is the
    # calibrated threshold's call, not a default to the frontier model.
    empty = [{"role": "user", "content": ""}]
    prior = LearnedClassifier()(features(empty)).score
    assert 0 < prior < 1
    assert (
        decide(
            Router(RoutingConfig(tiers=TIERS, classifier="learned", threshold=prior + 0.01)), empty
        ).model
        == SMALL
    )
    assert (
        decide(
            Router(RoutingConfig(tiers=TIERS, classifier="learned", threshold=prior - 0.01)), empty
        ).model
        == LARGE
    )


def test_three_tiers_use_the_middle_between_threshold_and_hard() -> None:
    tiers = {"small": SMALL, "medium": "gpt-4.1-mini", "large": LARGE}
    model = ScorerModel(bias=0.0, weights={}, threshold=0.4, manifest={})
    # A model with no weights scores every step 0.5: above 0.4, below the hard line (0.7).
    router = Router(RoutingConfig(tiers=tiers), classifier=LearnedClassifier(model=model))
    assert decide(router, EASY_STEPS[0]).tier == "medium"
    sure = ScorerModel(bias=2.0, weights={}, threshold=0.4, manifest={})  # scores 0.88
    strict = Router(RoutingConfig(tiers=tiers), classifier=LearnedClassifier(model=sure))
    assert decide(strict, EASY_STEPS[0]).tier == "large"
    low = ScorerModel(bias=-2.0, weights={}, threshold=0.4, manifest={})  # scores 0.12
    loose = Router(RoutingConfig(tiers=tiers), classifier=LearnedClassifier(model=low))
    assert decide(loose, EASY_STEPS[0]).tier == "small"


def test_bad_threshold_is_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        LearnedClassifier(1.5)
    with pytest.raises(ValueError, match="threshold"):
        RoutingConfig(tiers=TIERS, classifier="learned", threshold=0)


def test_non_latin_text_is_scored() -> None:
    vector = step_vector(features(user("把 config.py 里的超时从 30 秒改成 60 秒。")))
    assert any(name.startswith("c:") for name in vector)
    score = LearnedClassifier()(features(user("把 config.py 里的超时从 30 秒改成 60 秒。"))).score
    assert 0 < score < 1


def test_chinese_is_read_as_characters_and_character_pairs() -> None:
    vector = step_vector(features(user("证明根号 2 是无理数。")))
    assert {"w:证", "w:明", "b:证 明", "b:理 数"} <= vector.keys()
    # Latin words next to CJK text stay whole.
    assert "w:config" in step_vector(features(user("把 config 里的超时改成 60 秒")))


def test_a_proof_request_goes_up_in_german_spanish_and_chinese() -> None:
    router = Router(RoutingConfig(tiers=TIERS, classifier="learned"))
    for text in (
        "Beweise, dass es unendlich viele Primzahlen der Form 6k + 5 gibt.",
        "Demuestra que hay infinitos números primos de la forma 6k + 5.",
        "证明存在无穷多个形如 6k + 5 的素数。",
    ):
        assert decide(router, user(text)).model == LARGE, text


def tool_step(result: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Find why the nightly export drops rows and fix it."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ]


def test_a_routine_step_deep_in_a_session_lowers_the_score() -> None:
    classifier = LearnedClassifier()
    clean = tool_step("def export(rows):\n    return [r for r in rows if r.ok]\n")
    planning = classifier(features(clean, step_index=1))
    routine = classifier(features(clean, step_index=4))
    assert routine.score < planning.score
    assert routine.reasons[0].startswith("routine step")
    # A failure the tool reports, or a failed previous step, is never routine.
    failing = tool_step(
        'Traceback (most recent call last):\n  File "export.py", line 2\nKeyError: 3'
    )
    assert not classifier(features(failing, step_index=4)).reasons[0].startswith("routine")
    after_failure = classifier(features(clean, step_index=4, previous_outcome="failed"))
    assert after_failure.score > planning.score


# --------------------------------------------------------------------------- cascade


class Ask:
    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.calls += 1
        return self.answer


def test_cascade_asks_the_small_model_only_in_the_uncertain_band() -> None:
    step = features(EASY_STEPS[0])
    score = LearnedClassifier()(step).score
    ask = Ask("HARD")
    inside = CascadeClassifier(LearnedClassifier(score, uncertain_band=0.05), LLMClassifier(ask))
    result = inside(step)
    assert ask.calls == 1 and result.label == "hard" and result.source == "cascade"
    far = min(0.9999, score + 0.3)
    outside = CascadeClassifier(LearnedClassifier(far, uncertain_band=0.05), LLMClassifier(ask))
    assert outside(step).label == "easy" and ask.calls == 1


def test_cascade_is_built_on_the_learned_scorer() -> None:
    cascade = build_classifier("cascade", ask=Ask("EASY"), threshold=0.3, uncertain_band=0.2)
    assert isinstance(cascade, CascadeClassifier)
    assert isinstance(cascade.heuristic, LearnedClassifier)
    assert cascade.heuristic.threshold == 0.3 and cascade.heuristic.uncertain_band == 0.2


# --------------------------------------------------------------------------- one decision path


def test_guard_route_and_the_pipeline_decide_identically(
    sim: SimServer, make_guard: Callable[..., Guard]
) -> None:
    guard = make_guard(routing={"tiers": TIERS, "escalate": False})
    client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
    seen: list[RouteDecision] = []
    guard.observers.append(lambda call: seen.append(call.notes["route"]))
    steps = [*EASY_STEPS, *HARD_STEPS, EASY_STEPS[0]]
    with guard.session() as session:
        for number, messages in enumerate(steps):
            if number == len(steps) - 1:
                session.state.last_outcome = "failed"  # the pipeline records this on a failure
            predicted = guard.route(model=LARGE, messages=messages, session=session)
            client.chat.completions.create(model=LARGE, messages=messages)
            actual = seen[-1]
            assert (actual.model, actual.score, actual.reasons) == (
                predicted.model,
                predicted.score,
                predicted.reasons,
            )
            assert actual.features == predicted.features
    assert [d.model for d in seen[:3]] == [SMALL] * 3
    assert seen[-1].features is not None and seen[-1].features.previous_outcome == "failed"


# --------------------------------------------------------------------------- calibration


def route_line(score: float | None) -> str:
    return json.dumps({"event": "route", "level": "info", "score": score, "model": SMALL})


def test_calibration_hits_the_target_share() -> None:
    scores = [(i + 0.5) / 100 for i in range(100)]
    result = calibrate_threshold(scores, 0.3)
    assert result.large_share == 0.3 and result.events == 100
    assert sum(s >= result.threshold for s in scores) == 30
    assert calibrate_threshold(scores, 0.0).large_share == 0.0
    assert calibrate_threshold(scores, 1.0).large_share == 1.0
    with pytest.raises(ValueError, match="no scored"):
        calibrate_threshold([], 0.3)


def test_reading_route_events_skips_other_lines_and_rejects_bad_scores() -> None:
    lines = [
        "not json",
        json.dumps({"event": "settle", "score": 0.9}),
        route_line(0.25),
        route_line(None),
        route_line(0.75),
    ]
    assert read_route_scores(lines) == [0.25, 0.75]
    with pytest.raises(ValueError, match="line 1"):
        read_route_scores([route_line(3.0)], "events.jsonl")


def test_calibrate_command_on_recorded_traffic(
    sim: SimServer, make_guard: Callable[..., Guard], tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    steps = [*EASY_STEPS, *HARD_STEPS] * 2
    with log.open("w", encoding="utf-8") as stream:
        configure_logging("info", json_lines=True, stream=stream)
        try:
            guard = make_guard(routing={"tiers": TIERS, "escalate": False})
            client = guard.wrap(openai.OpenAI(base_url=sim.base_url, api_key="sk-test"))
            with guard.session():
                for messages in steps:
                    client.chat.completions.create(model=LARGE, messages=messages)
        finally:
            logger = logging.getLogger("agentguard")
            for handler in list(logger.handlers):
                if getattr(handler, "_agentguard", False):
                    logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["route", "calibrate", "--target-large-share", "0.4", "--events", str(log), "--json"],
    )
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)
    assert calibration["events"] == len(steps) and calibration["large_share"] == 0.4
    # The calibrated threshold, put in the config, sends that share of the same steps up: the
    # four hard ones.
    tuned = make_guard(routing={"tiers": TIERS, "threshold": calibration["threshold"]})
    models = [tuned.route(model=LARGE, messages=m).model for m in steps]
    assert models == [SMALL] * 3 + [LARGE] * 2 + [SMALL] * 3 + [LARGE] * 2

    text = runner.invoke(
        app, ["route", "calibrate", "--target-large-share", "0.4", "--events", str(log)]
    )
    assert text.exit_code == 0 and text.stdout.startswith("routing.threshold = ")


def test_calibrate_command_fails_clearly(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        app,
        ["route", "calibrate", "--target-large-share", "0.3", "--events", str(tmp_path / "x")],
    )
    assert missing.exit_code == 2 and "--events" in missing.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text(route_line(None) + "\n")
    none = runner.invoke(
        app, ["route", "calibrate", "--target-large-share", "0.3", "--events", str(empty)]
    )
    assert none.exit_code == 2 and "no scored route events" in none.output
    bad = runner.invoke(
        app, ["route", "calibrate", "--target-large-share", "1.5", "--events", str(empty)]
    )
    assert bad.exit_code == 2 and "target-large-share" in bad.output


def test_difficulty_markers_count_only_for_a_model_that_weighs_them() -> None:
    step = extract_features(
        user("Calculate 3 + 4, then explain why the total is odd."), None, input_tokens=20
    )
    vector = step_vector(step)
    assert vector["d:math"] > 0 and vector["d:reasoning"] > 0 and vector["d:parts"] > 0
    assert all(0 < value <= 1 for name, value in vector.items() if name.startswith("d:"))
    assert not any(name.startswith("d:") for name in step_vector(step, markers=False))

    plain = ScorerModel(0.0, {"w:calculate": 1.0}, 0.5, {})
    marked = ScorerModel(0.0, {"w:calculate": 1.0, "d:math": 2.0}, 0.5, {})
    assert not plain.uses_markers and marked.uses_markers
    assert LearnedClassifier(model=marked)(step).score > LearnedClassifier(model=plain)(step).score
    # The shipped model weighs no marker: its score is the same with or without them.
    shipped = load_model()
    assert not shipped.uses_markers
    assert shipped.log_odds(vector) == shipped.log_odds(step_vector(step, markers=False))
