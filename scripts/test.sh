#!/usr/bin/env bash
# Installs agentguard with its integrations and test tools into .venv, then runs the whole
# suite: ruff, the type checker, the Python tests, and the OpenClaw plugin's unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
packages=(-e ".[dev,postgres,proxy]")
for integration in integrations/langchain integrations/crewai integrations/openai_agents integrations/pydantic_ai; do
    if [ -f "$integration/pyproject.toml" ]; then
        packages+=(-e "$integration")
    fi
done
.venv/bin/python -m pip install --quiet "${packages[@]}"

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
if [ -d integrations/openclaw/test ] && command -v node >/dev/null 2>&1; then
    echo "== node --test (OpenClaw plugin)"
    (cd integrations/openclaw && node --test test/*.test.js)
fi
