#!/usr/bin/env bash
# Apply ruff's automatic fixes and formatting to the whole repository, once
# (configuration: [tool.ruff] in pyproject.toml). Afterwards `make test` runs
# `ruff check .` and `ruff format --check .` and expects both to pass; what
# ruff cannot fix by itself is printed at the end, by rule, to fix by hand.
#
# Usage: scripts/lint_fix.sh [RUFF]   (default: .venv/bin/ruff, else ruff on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF=${1:-.venv/bin/ruff}
if [ ! -x "$RUFF" ]; then
  RUFF=$(command -v ruff) || { echo "ruff not found: pip install ruff==0.17.6" >&2; exit 1; }
fi
"$RUFF" --version
# Safe fixes only (imports sorted, unused imports dropped, pyupgrade rewrites).
"$RUFF" check --fix --exit-zero --silent .
"$RUFF" format .
# Fixes can change line breaks the formatter decides on, and formatting can
# make an import block unsorted again: one more round, then report.
"$RUFF" check --fix --exit-zero --silent .
"$RUFF" format --quiet .
echo "left to fix by hand:"
"$RUFF" check --output-format concise --exit-zero .
"$RUFF" check --statistics --exit-zero .
