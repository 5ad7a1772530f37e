"""The configuration reference (docs/configuration.md) is generated from the config models:
every field has a docstring, the committed file matches the models, and a field added to a
model appears in the reference without further work."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from agentguard.config import GuardConfig, LimitsConfig, _Section
from agentguard.config_docs import render, sections, undocumented

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _all_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field's dotted name, found by walking the models independently."""
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        nested = [
            arg
            for arg in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        if nested:
            names.extend(_all_fields(nested[0], f"{prefix}{name}."))
        else:
            names.append(f"{prefix}{name}")
    return names


def test_every_config_field_and_section_has_a_docstring() -> None:
    assert undocumented() == [], (
        "add a docstring under each of these in agentguard/config.py, then run "
        "`python -m agentguard.config_docs > docs/configuration.md`"
    )


def test_every_config_field_is_in_the_reference() -> None:
    reference = REFERENCE.read_text(encoding="utf-8")
    documented = {entry.path for section in sections() for entry in section.entries}
    short = {path.replace("[]", "").replace('."<name>"', "") for path in documented}
    for field in _all_fields(GuardConfig):
        assert field in short, f"{field} is not in the reference"
    for path in documented:
        assert f"### `{path}`" in reference, path


def test_the_committed_reference_is_up_to_date_with_the_models() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `python -m agentguard.config_docs > "
        "docs/configuration.md`"
    )


def test_a_field_added_to_a_model_appears_with_its_docstring_default_and_variable() -> None:
    class NewLimits(LimitsConfig):
        max_wall_clock_s: float | None = Field(default=None, gt=0)
        """Seconds a session may run."""

    class NewSection(_Section):
        """A section added later."""

        flag: bool = True
        """Turns the new thing on."""

    class NewConfig(GuardConfig):
        limits: NewLimits = Field(default_factory=NewLimits)
        extra: NewSection = Field(default_factory=NewSection)

    text = render(NewConfig)
    assert "### `limits.max_wall_clock_s`" in text
    assert "Seconds a session may run." in text
    assert "`AGENTGUARD_LIMITS__MAX_WALL_CLOCK_S`" in text
    assert "## `[extra]`" in text and "A section added later." in text
    assert "### `extra.flag`" in text and "default: `true`" in text

    class Undocumented(GuardConfig):
        extra: NewSection = Field(default_factory=NewSection)
        stray: int = 3

    assert undocumented(Undocumented) == ["stray"]


def test_the_silent_output_cap_is_explained() -> None:
    reference = REFERENCE.read_text(encoding="utf-8")
    cap = reference[reference.index("### `limits.default_max_output_tokens`") :]
    cap = cap[: cap.index("### `limits.enforce_output_cap`")]
    assert "default: `4096`" in cap and "max_tokens" in cap and "cut off" in cap
