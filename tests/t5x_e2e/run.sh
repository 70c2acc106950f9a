#!/bin/bash
# End-to-end check of mpt_jax.t5x_ext with the real, unpatched T5X on a CPU (tiny T5,
# in-memory embedded benchmark, a few steps per stage). Needs T5X + Flaxformer installed;
# tests/test_t5x_integration.py runs it whenever they are.
#
#   tests/t5x_e2e/run.sh <work dir>
#
# Stages: a T5X checkpoint of the bare tiny backbone (T5X's own pretrain run, standing
# in for a public T5 1.1 checkpoint) → per-task teachers → MPT source training with
# distillation → target adaptation (average init) → t5x.eval → t5x.infer, and a
# hierarchical prompt on the Flaxformer architecture. The teacher, source and
# hierarchical runs stop halfway and are resumed by rerunning the same command with more
# steps (T5X restores the latest checkpoint of MODEL_DIR, in Orbax format). Each
# t5x.train, t5x.eval and t5x.infer log is kept as <stage>[_resumed].log, and each stage's
# wall time is printed; compare.py lists what changed between checkpoints. Training runs
# skip T5X's inference evaluation (decoding is t5x.eval's and t5x.infer's stage here), and
# all but the source run skip its teacher-forced evaluation too (NOEVAL): each costs a
# dataset build and a compile per run.
set -euo pipefail
WORK=${1:?usage: run.sh <work dir>}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CONFIGS=$(python -c "import mpt_jax.configs as c; print(list(c.__path__)[0])")
mkdir -p "$WORK"
cd "$WORK"
COMMON=(--gin_search_paths="$CONFIGS" --gin.BATCH_SIZE=8 --gin.USE_CACHED_TASKS=False
        --gin.EVAL_PERIOD=20 --gin.EVAL_STEPS=2 --gin.train.infer_eval_dataset_cfg=None
        --gin.utils.SaveCheckpointConfig.period=20)
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

train backbone --gin_search_paths="$CONFIGS,$REPO/tests/t5x_configs" \
  --gin_file=tiny_backbone.gin --gin.MODEL_DIR="'$WORK/backbone'" --gin.TRAIN_STEPS=20 \
  --gin.EVAL_PERIOD=10 --gin.utils.SaveCheckpointConfig.period=10

TEACHER=("${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/teachers.gin "${TINY[@]}"
         --gin_file=runs/teacher.gin "${EMB[@]}" --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6
         --gin.INITIAL_CHECKPOINT_PATH="'$WORK/backbone/checkpoint_20'"
         --gin.MODEL_DIR="'$WORK/teacher'")
train teacher "${TEACHER[@]}" --gin.TRAIN_STEPS=40
train teacher_resumed "${TEACHER[@]}" --gin.TRAIN_STEPS=60
python "$REPO/tests/t5x_e2e/compare.py" backbone/checkpoint_20 teacher/checkpoint_60
python -m mpt_jax.t5x_ext.export --checkpoint=teacher/checkpoint_60 \
  --npy_dir=teacher/prompt_npy --overwrite

SOURCE=("${COMMON[@]}" --gin_file=models/mpt.gin "${TINY[@]}" --gin_file=runs/source.gin
        "${EMB[@]}" --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.NUM_TASKS=6
        --gin.TEACHER_CHECKPOINT="'$WORK/teacher/checkpoint_60'"
        --gin.TEACHER_PROMPTS="'$WORK/teacher/prompt_npy/task_prompts.npy'"
        --gin.Distillation.weight=0.5 --gin.MODEL_DIR="'$WORK/source'")
train source "${SOURCE[@]}" --gin.TRAIN_STEPS=80
train source_resumed "${SOURCE[@]}" --gin.TRAIN_STEPS=100
python "$REPO/tests/t5x_e2e/compare.py" teacher/checkpoint_60 source/checkpoint_100
python "$REPO/tests/t5x_e2e/compare.py" source/checkpoint_80 source/checkpoint_100
python -m mpt_jax.t5x_ext.export --checkpoint=source/checkpoint_100 \
  --npy_dir=source/prompt_npy --peft_dir=source/peft --overwrite

train target "${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/target.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.SOURCE_CHECKPOINT="'$WORK/source/checkpoint_100'" \
  --gin.SOURCE_PROMPT_DIR="'$WORK/source/prompt_npy'" --gin.TARGET_INIT="'average'" \
  --gin.TRAIN_STEPS=120 --gin.MODEL_DIR="'$WORK/target'"
python "$REPO/tests/t5x_e2e/compare.py" source/checkpoint_100 target/checkpoint_120

run eval t5x.eval --gin_search_paths="$CONFIGS" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/eval.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.CHECKPOINT_PATH="'$WORK/target/checkpoint_120'" --gin.EVAL_OUTPUT_DIR="'$WORK/eval'" \
  --gin.TASK_FEATURE_LENGTHS=None
run infer t5x.infer --gin_search_paths="$CONFIGS" --gin_file=models/mpt.gin "${TINY[@]}" \
  --gin_file=runs/infer.gin "${EMB[@]}" \
  --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_target_0_32shot'" --gin.NUM_TASKS=1 \
  --gin.CHECKPOINT_PATH="'$WORK/target/checkpoint_120'" --gin.INFER_OUTPUT_DIR="'$WORK/infer'"

# Hierarchical prompt (shared → group → task) on Flaxformer's T5, from the backbone.
HIER=("${COMMON[@]}" "${NOEVAL[@]}" --gin_file=models/hierarchical.gin "${TINY[@]}"
      --gin_file=architectures/flaxformer_t5_prompt.gin --gin_file=runs/teacher.gin "${EMB[@]}"
      --gin.MIXTURE_OR_TASK_NAME="'mpt_embedded_source'" --gin.TASK_GROUPS="(0, 0, 0, 1, 1, 1)" --gin.ACTIVATION_DTYPE="'float32'"
      --gin.INITIAL_CHECKPOINT_PATH="'$WORK/backbone/checkpoint_20'"
      --gin.MODEL_DIR="'$WORK/hierarchical'")
train hierarchical "${HIER[@]}" --gin.TRAIN_STEPS=40
train hierarchical_resumed "${HIER[@]}" --gin.TRAIN_STEPS=60
python "$REPO/tests/t5x_e2e/compare.py" backbone/checkpoint_20 hierarchical/checkpoint_60
echo "t5x end-to-end: all stages finished"
