#!/usr/bin/env bash
# Build the API reference into docs/_build/html; any warning (a broken reference, a public
# object without a docstring or an Examples section) fails the build. -E re-reads every source:
# Sphinx does not notice a changed docstring, so an incremental build would hide its warnings.
# Needs the docs extra: pip install -e ".[docs]"
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m sphinx -E -W --keep-going -b html docs docs/_build/html "$@"
