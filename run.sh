#!/usr/bin/env bash
# One command: set up on a fresh machine, then run the main job on the embedded default subject:
# the standard certify suite (every defense; IOI, recall and unlearning; 3 budgets) into certify-out/standard.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_WAIT_POLICY=PASSIVE
bash scripts/install.sh
python -m certify run --suite standard --out "${LATENTGUARD_OUT:-certify-out/standard}"
