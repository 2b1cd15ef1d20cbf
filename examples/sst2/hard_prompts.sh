#!/usr/bin/env bash
# Evaluate hand-written prompts on the SST-2 dev set with the same command as the soft prompts.
# Usage: bash examples/sst2/hard_prompts.sh [DATA_DIR]
set -euo pipefail
data=${1:-../shared/data/sst2}
out=${OUT:-runs/sst2}
here=$(dirname "$0")/hard-prompts
mkdir -p "$out"
dev=(--data "$data/dev.tsv" --input-col content --output-col label --label-map 0=negative,1=positive)
# Templates that end in "Sentiment:" are naturally followed by " positive" (with a space).
for name in zero-shot zero-shot-echo instruction few-shot-4 few-shot-8; do
  softserve eval --hard-prompt "@$here/$name.txt" "${dev[@]}" --labels " positive, negative" \
    --json "$out/hard-$name.dev.json"
done
softserve eval --hard-prompt "@$here/zero-shot.txt" "${dev[@]}" --labels "positive,negative" \
  --json "$out/hard-zero-shot-nospace.dev.json"
softserve eval --hard-prompt "@$here/chat.txt" "${dev[@]}" --labels "positive,negative" \
  --json "$out/hard-chat.dev.json"
softserve eval --none "${dev[@]}" --labels " positive, negative" --json "$out/none.dev.json"
