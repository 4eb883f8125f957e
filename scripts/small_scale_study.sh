#!/usr/bin/env bash
# The training recipe's small-scale study, sized for 2 CPU cores (~2 h): everything the training issue asks
# to be shown besides the full-size fine-tune, at a scale where each run takes minutes.
#
#   student   a 6-layer student of embeddinggemma-300m (train/student.py keeps teacher layers
#             [0, 6, 12, 16, 22, 23]: five sliding-window layers, then the last global one), scored on
#             the local suite before any training
#   ablation  the student distilled on `code` with the whole recipe (finetune-code) and with each of
#             spread-out, distillation, hardness weighting, Matryoshka removed (src/embeddinggemma/recipes/ablation-*.yaml);
#             each scored at 768/128 dims x float32/int8/binary embeddings on the code dev split and
#             the local suite. The full arm is also "the distilled student" (retention, speed-up).
#   soup      three fine-tunes of the distilled student on different dataset mixtures
#             (src/embeddinggemma/recipes/soup-mixture-{a,b,c}.yaml, in-batch negatives only: only `code` has mined
#             negatives and teacher embeddings), their uniform soup, all scored on the suite and the
#             dev splits of every training dataset.
#
# Usage: scripts/small_scale_study.sh [student] [ablation] [soup]   (default: all three, in order)
# Env: OUT (runs, default runs/small), RESULTS (JSON, default benchmarks/results/small-scale),
#      STEPS / SOUP_STEPS (optimizer steps per run), LAYERS (student depth), ARMS (ablation runs to do),
#      SEED (data order and negative sampling; a non-zero seed names its ablation runs ARM-seedN, so
#      repeating the ablation under other seeds measures its run-to-run noise), KEEP_CHECKPOINTS=1 to keep
#      each run's resumable checkpoint (~2.7 GB each; by default only the trained model is kept).
# Needs: the training data (scripts/build_training_data.py, with the code teacher cache and mined
# negatives; see src/embeddinggemma/recipes/finetune-code.yaml) and the local suite (scripts/build_local_suite.py).
set -euo pipefail
OUT=${OUT:-runs/small}
RESULTS=${RESULTS:-benchmarks/results/small-scale}
STEPS=${STEPS:-24}
SOUP_STEPS=${SOUP_STEPS:-8}
LAYERS=${LAYERS:-6}
SEED=${SEED:-0}
TAG=""
[[ $SEED == 0 ]] || TAG="-seed$SEED"
STAGES=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=(student ablation soup)
mkdir -p "$OUT" "$RESULTS"

# Small scale: a 6-layer student, 256-token texts, 16 rows (+16 hard negatives) per contrastive batch.
SCALE=(model.max_seq_length=256 data.batch_size=16 train.gradient_cache=false train.micro_batch_tokens=2048
       train.save_every=0 train.log_every=2 "eval.tasks=[]")
DISTILL=(model.student_layers="$LAYERS" train.steps="$STEPS" optim.lr=5e-5 optim.warmup_steps=2 data.seed="$SEED")
EVAL=(--dim 768 128 --embedding-precision float32 int8 binary --no-progress)

score() {  # score MODEL NAME: the local suite and the code dev split -> $RESULTS/NAME-{suite,code-dev}.json
    embeddinggemma eval --suite local --model "$1" "${EVAL[@]}" -o "$RESULTS/$2-suite.json" --name "$2"
    embeddinggemma eval --suite-dir data/train/code --model "$1" "${EVAL[@]}" -o "$RESULTS/$2-code-dev.json" --name "$2"
}

for stage in "${STAGES[@]}"; do
    case $stage in
    student)
        [[ -d $OUT/student-init ]] || embeddinggemma student google/embeddinggemma-300m --layers "$LAYERS" -o "$OUT/student-init"
        score "$OUT/student-init" student-init
        ;;
    ablation)
        for arm in ${ARMS:-finetune-code ablation-no-spread-out ablation-no-distill ablation-no-hardness ablation-no-matryoshka}; do
            run=$arm$TAG
            embeddinggemma train "$arm" "${SCALE[@]}" "${DISTILL[@]}" train.output_dir="$OUT/$run" | tee "$OUT/$run.log"
            cp "$OUT/$run/train_log.jsonl" "$RESULTS/$run-train_log.jsonl"
            score "$OUT/$run/model" "$run"
            # The final checkpoint (weights + AdamW state, ~2.7 GB) is only needed to resume; the study keeps the model.
            [[ -n ${KEEP_CHECKPOINTS:-} ]] || rm -rf "$OUT/$run/checkpoints"
        done
        ;;
    soup)
        # Mixture runs start from the distilled student; datasets without mined negatives use in-batch ones.
        DATA=()
        for d in code manpages manpages-xling docs-faq docs-sections bitext; do DATA+=("data.datasets.$d=data/train/$d/train"); done
        mkdir -p "$OUT/dev-suite"
        for d in code manpages manpages-xling docs-faq docs-sections bitext; do ln -sfn "$PWD/data/train/$d/dev" "$OUT/dev-suite/$d"; done
        for m in a b c; do
            embeddinggemma train "soup-mixture-$m" "${SCALE[@]}" "${DATA[@]}" data.num_hard_negatives=0 \
                model.checkpoint="$OUT/finetune-code/model" train.steps="$SOUP_STEPS" optim.warmup_steps=2 \
                optim.lr=2e-5 train.output_dir="$OUT/soup-mixture-$m" | tee "$OUT/soup-mixture-$m.log"
            [[ -n ${KEEP_CHECKPOINTS:-} ]] || rm -rf "$OUT/soup-mixture-$m/checkpoints"
        done
        rm -rf "$OUT/soup-abc"
        embeddinggemma soup "$OUT"/soup-mixture-{a,b,c}/model -o "$OUT/soup-abc"
        for run in soup-mixture-a soup-mixture-b soup-mixture-c soup-abc; do
            model=$OUT/$run/model
            [[ -d $model ]] || model=$OUT/$run
            embeddinggemma eval --suite local --model "$model" --dim 768 128 --no-progress -o "$RESULTS/$run-suite.json" --name "$run"
            embeddinggemma eval --suite-dir "$OUT/dev-suite" --model "$model" --dim 768 128 --no-progress -o "$RESULTS/$run-dev.json" --name "$run"
        done
        embeddinggemma eval --suite-dir "$OUT/dev-suite" --model "$OUT/finetune-code/model" --dim 768 128 --no-progress \
            -o "$RESULTS/finetune-code-dev.json" --name finetune-code
        ;;
    *) echo "unknown stage $stage (student, ablation, soup)" >&2; exit 2 ;;
    esac
done
