#!/bin/bash
# End-to-end check of mpt_jax.t5x_ext with the real T5X on a CPU (tiny T5, in-memory
# embedded benchmark, a few steps per stage). Needs T5X + Flaxformer installed.
#
#   tests/t5x_e2e/run.sh <work dir>
#
# Stages: a T5X checkpoint of the bare tiny backbone (T5X's own pretrain run, standing
# in for a public T5 1.1 checkpoint) → per-task teachers → MPT source training with
# distillation → target adaptation (average init) → t5x.eval → t5x.infer. After each
# training stage, compare.py lists what changed between checkpoints.
set -euo pipefail
WORK=${1:?usage: run.sh <work dir>}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIGS=$(python -c "import mpt_jax.configs as c; print(list(c.__path__)[0])")
mkdir -p "$WORK"
cd "$WORK"
COMMON=(--gin_search_paths="$CONFIGS" --gin.BATCH_SIZE=8 --gin.USE_CACHED_TASKS=False
        --gin.EVAL_PERIOD=20 --gin.EVAL_STEPS=2 --gin.EVALUATOR_NUM_EXAMPLES=16
        --gin.utils.SaveCheckpointConfig.period=20)
TINY=(--gin_file=models/sizes/tiny.gin --gin.PROMPT_LENGTH=4)
EMB=(--gin_file=runs/embedded.gin)

python -m t5x.train --gin_search_paths="$CONFIGS,$REPO/tests/t5x_configs" \
  --gin_file=tiny_backbone.gin --gin.MODEL_DIR="'$WORK/backbone'" --gin.TRAIN_STEPS=20 \
  --gin.EVAL_PERIOD=10 --gin.utils.SaveCheckpointConfig.period=10

python -m t5x.train "${COMMON[@]}" --gin_file=models/teachers.gin "${TINY[@]}" \
  --gin_file=runs/teacher.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6 \
  --gin.INITIAL_CHECKPOINT_PATH="'$WORK/backbone/checkpoint_20'" \
  --gin.TRAIN_STEPS=60 --gin.MODEL_DIR="'$WORK/teacher'"
python "$REPO/tests/t5x_e2e/compare.py" backbone/checkpoint_20 teacher/checkpoint_60
python -m mpt_jax.t5x_ext.export --checkpoint=teacher/checkpoint_60 \
  --npy_dir=teacher/prompt_npy --overwrite

python -m t5x.train "${COMMON[@]}" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/source.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6 \
  --gin.TEACHER_CHECKPOINT="'$WORK/teacher/checkpoint_60'" \
  --gin.TEACHER_PROMPTS="'$WORK/teacher/prompt_npy/task_prompts.npy'" \
  --gin.TRAIN_STEPS=100 --gin.MODEL_DIR="'$WORK/source'"
python "$REPO/tests/t5x_e2e/compare.py" teacher/checkpoint_60 source/checkpoint_100
python "$REPO/tests/t5x_e2e/compare.py" source/checkpoint_80 source/checkpoint_100
python -m mpt_jax.t5x_ext.export --checkpoint=source/checkpoint_100 \
  --npy_dir=source/prompt_npy --peft_dir=source/peft --overwrite

python -m t5x.train "${COMMON[@]}" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/target.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.SOURCE_CHECKPOINT="'$WORK/source/checkpoint_100'" \
  --gin.SOURCE_PROMPT_DIR="'$WORK/source/prompt_npy'" --gin.TARGET_INIT="'average'" \
  --gin.TRAIN_STEPS=140 --gin.MODEL_DIR="'$WORK/target'"
python "$REPO/tests/t5x_e2e/compare.py" source/checkpoint_100 target/checkpoint_140

python -m t5x.eval --gin_search_paths="$CONFIGS" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/eval.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.CHECKPOINT_PATH="'$WORK/target/checkpoint_140'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval'" \
  --gin.TASK_FEATURE_LENGTHS=None
python -m t5x.infer --gin_search_paths="$CONFIGS" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/infer.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.CHECKPOINT_PATH="'$WORK/target/checkpoint_140'" --gin.INFER_OUTPUT_DIR="'$WORK/infer'"
echo "t5x end-to-end: all stages finished"
