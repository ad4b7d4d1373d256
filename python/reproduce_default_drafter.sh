#!/usr/bin/env bash
# Reproduce the shipped SmolLM2-135M DSpark drafter (dspark_sglang/assets/drafters/smollm2-135m-dspark) in one
# command: on-policy answers -> feature cache -> rank-128 base run -> long-context answers -> grown cache ->
# long-context fine-tune with a 10,603-id draft vocabulary -> STS temperatures. Every line is resumable, so after
# a kill rerun the same command (finished stages skip their work; a finished training run only re-exports).
# About 6 h on a 2-core CPU host (answers 31 + 33 min, features 34 + 20 min, base 3.1 h, fine-tune 18 min, STS ~5 min).
#
#     bash python/reproduce_default_drafter.sh [WORK_DIR [OUT_DIR]]      # default .cache/train-default, WORK_DIR/drafter
#
# The answers come from an unseeded SGLang server, so a rerun trains on other (equally distributed) answers and
# lands near, not exactly on, the shipped weights (benchmark/train/RESULTS.md has the numbers to compare with).
# The DFlash ablation: the two `train` lines with `--ablation dflash` instead of the Markov flags and another --out.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-.cache/train-default}
D=${2:-$W/drafter}
PY=${PYTHON:-python}
TRAIN=(python/train_drafter.py)
FLAGS=(--preset smollm2-v2 --work-dir "$W")
mkdir -p "$W"

$PY "${TRAIN[@]}" generate "${FLAGS[@]}"                                          # 2,000 answers (+ 240 references)
$PY "${TRAIN[@]}" features "${FLAGS[@]}" --threads 2
$PY "${TRAIN[@]}" train "${FLAGS[@]}" --steps 1500 --markov-rank 128 --confidence-detached \
    --run-name r128d --out "$W/out_r128d" --threads 1                             # base: 1,500 steps
$PY "${TRAIN[@]}" repo "${FLAGS[@]}" --num-repo-prompts 80 --threads 1            # 80 long-context answers
$PY "${TRAIN[@]}" features "${FLAGS[@]}" --threads 2                              # ... appended to the cache
$PY "${TRAIN[@]}" train "${FLAGS[@]}" --init-from "$W/out_r128d" --steps 300 --markov-rank 128 --confidence-detached \
    --markov-rows draft_vocab --draft-vocab-size 10603 --lr 5e-4 --holdout 0 --long-seq-share 0.25 \
    --run-name ft_r128d --out "$D" --threads 1                                    # fine-tune: 300 steps
$PY python/fit_sts.py --drafter "$D" --preset smollm2-v2 --exclude-shard "$W/answers.jsonl" \
    --work-dir "$W/fit_sts" --num-prompts 150 --max-new-tokens 64 --temperature 1.0
echo "drafter: $D"
