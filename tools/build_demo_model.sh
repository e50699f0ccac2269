#!/usr/bin/env bash
# Builds a demo model from nothing with the project's own runs:
#   1. span corruption from scratch on the demo world's corpus (gin/demo/pretrain.gin)
#   2. LM adaptation of that checkpoint (gin/demo/lm_adapt.gin)
#   3. export of the LM-adapted model as a Hugging Face folder in bfloat16
#
#   tools/build_demo_model.sh [SIZE] [--gin.NAME=VALUE ...]
#
# SIZE is one of the demo model family (gin/demo/model.gin, then model_<SIZE>.gin):
#   s   (default) 4.9M parameters: the shipped demo model,
#       demo_models/{span_corruption,lm_adapted} -> prompt_tuning/assets/demo_world_t5;
#       2,500 + 800 steps, about 30 minutes on 2 CPU cores
#   xs  1.05M: demo_models/xs/... -> prompt_tuning/assets/demo_world_t5_xs;
#       the same steps, about 10 minutes
#   l   10.6M: demo_models/l/... -> demo_models/l/hf (21 MB, not shipped);
#       6,000 + 1,000 steps, about an hour on 2 idle cores (2 h 15 min on one:
#       LM adaptation runs at a quarter of span corruption's steps/s)
#   decoder_only  the decoder-only demo LM (gin/demo/model_decoder_only_s.gin,
#       4,769,024 parameters): only a causal LM pre-training on the corpus
#       (gin/demo/pretrain_decoder_only.gin), no LM adaptation and no export,
#       into demo_models/decoder_only/lm; later runs load it with
#       --gin.INITIAL_CHECKPOINT_PATH (configs/demo/probe.toml: checkpoint_1000).
#       1,000 steps, 0.35-0.65 steps/s on 2 shared cores: about 40 minutes
# Every step is seeded; the training checkpoints stay in demo_models/ (the
# span corruption one is the "span corruption" arm of configs/demo/objective.toml).
# A re-run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SIZE=s
if [[ $# -gt 0 && $1 != -* ]]; then SIZE=$1; shift; fi
case $SIZE in
  s)  SIZE_GIN=(); OUT=${DEMO_MODELS:-demo_models}
      EXPORT=prompt_tuning/assets/demo_world_t5; STEPS=() ;;
  xs) SIZE_GIN=(--gin_file=gin/demo/model_xs.gin); OUT=${DEMO_MODELS:-demo_models}/xs
      EXPORT=prompt_tuning/assets/demo_world_t5_xs; STEPS=() ;;
  l)  SIZE_GIN=(--gin_file=gin/demo/model_l.gin); OUT=${DEMO_MODELS:-demo_models}/l; EXPORT=$OUT/hf
      STEPS=(--gin.TRAIN_STEPS=6000 --gin.TRAIN_STEPS=7000) ;;
  decoder_only)
      # One stage only: the causal LM objective needs no adaptation step.
      exec $PYTHON -m prompt_tuning.train --gin_file=gin/demo/model_decoder_only_s.gin \
        --gin_file=gin/demo/pretrain_decoder_only.gin \
        --gin.MODEL_DIR="'${DEMO_MODELS:-demo_models}/decoder_only/lm'" "$@" ;;
  *)  echo "build_demo_model.sh: unknown size '$SIZE'; give xs, s, l or decoder_only." >&2; exit 2 ;;
esac
PRETRAIN_STEPS=(); ADAPT_STEPS=()
if [[ ${#STEPS[@]} -gt 0 ]]; then PRETRAIN_STEPS=("${STEPS[0]}"); ADAPT_STEPS=("${STEPS[1]}"); fi

$PYTHON -m prompt_tuning.train --gin_file=gin/demo/model.gin ${SIZE_GIN[@]+"${SIZE_GIN[@]}"} \
  --gin_file=gin/demo/pretrain.gin \
  --gin.MODEL_DIR="'$OUT/span_corruption'" ${PRETRAIN_STEPS[@]+"${PRETRAIN_STEPS[@]}"} "$@"
$PYTHON -m prompt_tuning.train --gin_file=gin/demo/model.gin ${SIZE_GIN[@]+"${SIZE_GIN[@]}"} \
  --gin_file=gin/demo/lm_adapt.gin \
  --gin.INITIAL_CHECKPOINT_PATH="'$OUT/span_corruption'" \
  --gin.MODEL_DIR="'$OUT/lm_adapted'" ${ADAPT_STEPS[@]+"${ADAPT_STEPS[@]}"} "$@"
$PYTHON tools/export_hf.py "$OUT/lm_adapted" "$EXPORT" --dtype bfloat16
