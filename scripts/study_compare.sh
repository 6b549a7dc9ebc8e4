#!/usr/bin/env bash
# The README's comparisons redone with `ivon-lora compare` (issue 34 item 3): a step-size grid of the same size for
# both optimizers, chosen on validation with a selection seed apart from the 5 reported seeds, 1,000 test questions,
# every baseline. Resumable: run it again and it reuses every finished run and evaluation.
#   bash scripts/study_compare.sh headline|wordpick [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
study=${1:?headline or wordpick}
runs=${2:-runs/compare}
case "$study" in
  headline) task=wordfacts_clean ;;
  wordpick) task=wordpick ;;
  *) echo "unknown study $study: headline or wordpick" >&2; exit 2 ;;
esac
exec .venv/bin/ivon-lora compare "recipes/smollm2/$task-adamw.yaml" "recipes/smollm2/$task-ivon.yaml" \
    --seeds 5 --select-seeds 1 --grid "dataset=$task:test_size=1000" \
    --grid "1:learning_rate=3e-4,1e-3,3e-3" --grid "2:learning_rate=0.3,1,3" \
    --out "$runs/$study"
