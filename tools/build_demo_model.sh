#!/usr/bin/env bash
# Builds the demo model from nothing with the project's own runs:
#   1. span corruption from scratch on the demo world's corpus (gin/demo/pretrain.gin)
#   2. LM adaptation of that checkpoint (gin/demo/lm_adapt.gin)
#   3. export of the LM-adapted model to prompt_tuning/assets/demo_world_t5
#      (a Hugging Face folder, bfloat16: what the README's demo tunes against)
# Every step is seeded; the checkpoints are kept in demo_models/ (the span
# corruption one is the "span corruption" arm of configs/demo/objective.toml).
# A re-run resumes where it stopped. About 30 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${DEMO_MODELS:-demo_models}

$PYTHON -m prompt_tuning.train --gin_file=gin/demo/model.gin --gin_file=gin/demo/pretrain.gin \
  --gin.MODEL_DIR="'$OUT/span_corruption'" "$@"
$PYTHON -m prompt_tuning.train --gin_file=gin/demo/model.gin --gin_file=gin/demo/lm_adapt.gin \
  --gin.INITIAL_CHECKPOINT_PATH="'$OUT/span_corruption'" \
  --gin.MODEL_DIR="'$OUT/lm_adapted'" "$@"
$PYTHON tools/export_hf.py "$OUT/lm_adapted" prompt_tuning/assets/demo_world_t5 --dtype bfloat16
