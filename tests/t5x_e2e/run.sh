#!/bin/bash
# End-to-end check of mpt_jax.t5x_ext with the real, unpatched T5X on a CPU (tiny T5,
# in-memory embedded benchmark, two steps per stage). Needs T5X + Flaxformer installed;
# tests/test_t5x_integration.py::test_t5x_end_to_end runs it whenever they are.
#
#   tests/t5x_e2e/run.sh <work dir>
#
# Stages, one process each (T5X's own command lines): a T5X checkpoint of the bare tiny
# backbone (T5X's own pretrain run, standing in for a public T5 1.1 checkpoint) →
# per-task teachers → export → MPT source training with distillation → export → target
# adaptation (average init) → the target run resumed for one more step (T5X restores the
# latest checkpoint of MODEL_DIR, in Orbax format) → t5x.eval → t5x.infer, and a
# hierarchical prompt on the Flaxformer architecture from the backbone. Each stage's log
# is kept as <stage>.log and its wall time printed; tests/t5x_e2e/compare.py lists what
# changed between two checkpoints (the test checks the same itself). Only the source run
# evaluates during training (teacher-forced, one batch: PromptDistillationModel's eval
# path); decoding is t5x.eval's and t5x.infer's stage. Checkpoints: at each run's end.
set -euo pipefail
WORK=${1:?usage: run.sh <work dir>}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIGS=$(python -c "import mpt_jax.configs as c; print(list(c.__path__)[0])")
mkdir -p "$WORK"
cd "$WORK"
COMMON=(--gin_search_paths="$CONFIGS" --gin.BATCH_SIZE=4 --gin.USE_CACHED_TASKS=False
        --gin.EVAL_PERIOD=1000 --gin.EVAL_STEPS=1 --gin.train.infer_eval_dataset_cfg=None
        --gin.utils.SaveCheckpointConfig.period=1000)
TINY=(--gin_file=models/sizes/tiny.gin --gin.PROMPT_LENGTH=4)
EMB=(--gin_file=runs/embedded.gin)
NOEVAL=(--gin.train.train_eval_dataset_cfg=None)
run() {  # run <log name> <python module> <flags...>: one stage, its stderr in <log name>.log
  local log=$1 module=$2 start=$SECONDS
  shift 2
  python -m "$module" "$@" 2> "$WORK/$log.log" || { tail -40 "$WORK/$log.log"; exit 1; }
  echo "stage $log: $((SECONDS - start)) s"
}
train() { local log=$1; shift; run "$log" t5x.train "$@"; }

train backbone "${COMMON[@]}" "${NOEVAL[@]}" --gin_search_paths="$CONFIGS,$REPO/tests/t5x_configs" \
  --gin_file=tiny_backbone.gin --gin.MODEL_DIR="'$WORK/backbone'" --gin.TRAIN_STEPS=2

train teacher "${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/teachers.gin "${TINY[@]}" \
  --gin_file=runs/teacher.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6 \
  --gin.INITIAL_CHECKPOINT_PATH="'$WORK/backbone/checkpoint_2'" \
  --gin.TRAIN_STEPS=4 --gin.MODEL_DIR="'$WORK/teacher'"
python -m mpt_jax.t5x_ext.export --checkpoint=teacher/checkpoint_4 \
  --npy_dir=teacher/prompt_npy --overwrite

train source "${COMMON[@]}" --gin_file=models/mpt.gin "${TINY[@]}" --gin_file=runs/source.gin \
  "${EMB[@]}" --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6 \
  --gin.TEACHER_CHECKPOINT="'$WORK/teacher/checkpoint_4'" \
  --gin.TEACHER_PROMPTS="'$WORK/teacher/prompt_npy/task_prompts.npy'" \
  --gin.Distillation.weight=0.5 --gin.TRAIN_STEPS=6 --gin.MODEL_DIR="'$WORK/source'"
python -m mpt_jax.t5x_ext.export --checkpoint=source/checkpoint_6 \
  --npy_dir=source/prompt_npy --peft_dir=source/peft --overwrite

TARGET=("${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/mpt.gin "${TINY[@]}"
        --gin_file=runs/target.gin "${EMB[@]}"
        --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1
        --gin.SOURCE_CHECKPOINT="'$WORK/source/checkpoint_6'"
        --gin.SOURCE_PROMPT_DIR="'$WORK/source/prompt_npy'" --gin.TARGET_INIT="'average'"
        --gin.DROPOUT_RATE=0.0 --gin.MODEL_DIR="'$WORK/target'")  # no dropout: an exact first step
train target "${TARGET[@]}" --gin.TRAIN_STEPS=7
train target_resumed "${TARGET[@]}" --gin.TRAIN_STEPS=8

DECODE=(--gin_search_paths="$CONFIGS" --gin_file=models/mpt.gin "${TINY[@]}")
TARGET_DATA=(--gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1
             --gin.CHECKPOINT_PATH="'$WORK/target/checkpoint_8'")
run eval t5x.eval "${DECODE[@]}" --gin_file=runs/eval.gin "${EMB[@]}" "${TARGET_DATA[@]}" \
  --gin.EVAL_OUTPUT_DIR="'$WORK/eval'" --gin.TASK_FEATURE_LENGTHS=None
run infer t5x.infer "${DECODE[@]}" --gin_file=runs/infer.gin "${EMB[@]}" "${TARGET_DATA[@]}" \
  --gin.INFER_OUTPUT_DIR="'$WORK/infer'"

# Hierarchical prompt (shared → group → task) on Flaxformer's T5, from the backbone.
train hierarchical "${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/hierarchical.gin "${TINY[@]}" \
  --gin_file=architectures/flaxformer_t5_prompt.gin --gin_file=runs/teacher.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.TASK_GROUPS="(0, 0, 0, 1, 1, 1)" \
  --gin.ACTIVATION_DTYPE="'float32'" --gin.INITIAL_CHECKPOINT_PATH="'$WORK/backbone/checkpoint_2'" \
  --gin.TRAIN_STEPS=4 --gin.MODEL_DIR="'$WORK/hierarchical'"
echo "t5x end-to-end: all stages finished"
