#!/usr/bin/env bash
# The README's comparisons redone with `ivon-lora compare` (issue 34 item 3): a step-size grid of the same size for
# both optimizers (4 learning rates each), chosen on validation with a selection seed apart from the 5 reported
# seeds, 1,000 test questions, every baseline. Resumable: run it again and it reuses every finished run and evaluation.
#   bash scripts/study_compare.sh headline|wordpick [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:?headline or wordpick}
runs=${2:-runs/compare}
# Each grid brackets its method's choice: a choice at an edge widened the grid (the first headline grids, AdamW
# 3e-4-3e-3 and IVON 0.3-3, chose AdamW's 3e-3), with the same number of candidates for both methods.
case "$study" in
  headline) task=wordfacts_clean; adamw=3e-4,1e-3,3e-3,1e-2; ivon=0.3,1,2,3 ;;
  wordpick) task=wordpick; adamw=1e-4,3e-4,1e-3,3e-3; ivon=0.3,1,2,3 ;;
  *) echo "unknown study $study: headline or wordpick" >&2; exit 2 ;;
esac
exec .venv/bin/ivon-lora compare "recipes/smollm2/$task-adamw.yaml" "recipes/smollm2/$task-ivon.yaml" \
    --seeds 5 --select-seeds 1 --grid "dataset=$task:test_size=1000" \
    --grid "1:learning_rate=$adamw" --grid "2:learning_rate=$ivon" \
    --out "$runs/$study"
