#!/usr/bin/env bash
# The paper's initialisation ablation (encoder-decoder vs decoder-only vs random init, the same embedding
# recipe after init) shrunk to 2 CPU cores, repeated over seeds. What the GPU recipes do at full size
# (src/embeddinggemma/recipes/ul2-gemma3-270m.yaml, init-{encoder-decoder,decoder,random}.yaml), at this scale:
#
#   decoder   Gemma 3 270M (Q4_K_M GGUF, dequantized) cut to LAYERS of its 18 layers by train.student's rule
#             (18 -> 6 keeps layers [0, 4, 8, 12, 16, 17]: five sliding-window layers, then the last global one),
#             width 640, the 262k-entry table
#   adapt     the T5Gemma-style encoder-decoder built from it, UL2_STEPS steps of UL2 (8 examples of <= 48
#             text tokens per step, table frozen, softmax over the text's own tokens: data.corpus_vocabulary)
#             on the training datasets' train-split text
#   train     each init (the adapted encoder / the cut decoder run bidirectionally / random with the same
#             shape) + a new 640 -> 2560 -> 640 head, STEPS steps of the embedding recipe on `code` (16 rows,
#             in-batch negatives, 128 tokens, lr 5e-5, warmup 2, Matryoshka 640/512/256/128, no distillation:
#             the teacher is 768-wide), scored at 640 and 128 dims on the local suite and the code dev split;
#             repeated for every seed in SEEDS (data order, head and random init)
#
# Usage: scripts/init_ablation.sh [adapt] [train]        (default: both, in order)
# Env: OUT (runs, default runs/init-ablation), RESULTS (JSON, default benchmarks/results/init-ablation),
#      LAYERS, UL2_STEPS, STEPS, SEEDS ("0 1"), ARMS ("encoder-decoder decoder random").
# Table: python scripts/small_scale_table.py RESULTS --rows init-encoder-decoder init-decoder init-random \
#            --reference init-encoder-decoder
# Needs: the training data (scripts/build_training_data.py), the local suite (scripts/build_local_suite.py),
# pip install -e '.[train,encdec]'.
set -euo pipefail
OUT=${OUT:-runs/init-ablation}
RESULTS=${RESULTS:-benchmarks/results/init-ablation}
LAYERS=${LAYERS:-6}
UL2_STEPS=${UL2_STEPS:-30}
STEPS=${STEPS:-12}
SEEDS=${SEEDS:-0 1}
STAGES=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=(adapt train)
mkdir -p "$OUT" "$RESULTS"

UL2=(model.layers="$LAYERS" model.freeze_embeddings=true data.corpus_vocabulary=true data.max_tokens=48
     data.batch_size=8 optim.lr=3e-4 optim.warmup_steps=3 train.steps="$UL2_STEPS" train.log_every=1
     train.save_every=10 train.keep_checkpoints=1 train.output_dir="$OUT/ul2")
SCALE=(model.max_seq_length=128 "data.datasets={code: data/train/code/train}" "data.rates={code: 1}"
       data.num_hard_negatives=0 data.batch_size=16 train.gradient_cache=false train.micro_batch_tokens=2048
       train.steps="$STEPS" optim.lr=5e-5 optim.warmup_steps=2 train.save_every=0 train.log_every=2 "eval.tasks=[]")
EVAL=(--dim 640 128 --no-progress)

for stage in "${STAGES[@]}"; do
    case $stage in
    adapt)
        embeddinggemma adapt ul2-gemma3-270m "${UL2[@]}" | tee "$OUT/ul2.log"
        cp "$OUT/ul2/train_log.jsonl" "$RESULTS/ul2-train_log.jsonl"
        rm -rf "$OUT/ul2/checkpoints"
        ;;
    train)
        for seed in $SEEDS; do
            tag=""
            [[ $seed == 0 ]] || tag="-seed$seed"
            for arm in ${ARMS:-encoder-decoder decoder random}; do
                run=init-$arm$tag
                init=(model.student_layers="$LAYERS")
                [[ $arm != encoder-decoder ]] || init=(model.init_from="$OUT/ul2/model")
                embeddinggemma train "init-$arm" "${SCALE[@]}" "${init[@]}" data.seed="$seed" train.seed="$seed" \
                    train.output_dir="$OUT/$run" | tee "$OUT/$run.log"
                cp "$OUT/$run/train_log.jsonl" "$RESULTS/$run-train_log.jsonl"
                embeddinggemma eval --suite local --model "$OUT/$run/model" "${EVAL[@]}" -o "$RESULTS/$run-suite.json" --name "$run"
                embeddinggemma eval --suite-dir data/train/code --model "$OUT/$run/model" "${EVAL[@]}" \
                    -o "$RESULTS/$run-code-dev.json" --name "$run"
                rm -rf "$OUT/$run/checkpoints"
            done
        done
        ;;
    *) echo "unknown stage $stage (adapt, train)" >&2; exit 2 ;;
    esac
done
