#!/usr/bin/env bash
# One command: set up on a fresh machine, then run the main job on the embedded default subject.
set -euo pipefail
cd "$(dirname "$0")"
export OMP_WAIT_POLICY=PASSIVE
bash scripts/install.sh
python -m experiments.subject check
