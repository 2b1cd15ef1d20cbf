#!/usr/bin/env bash
# Train the SST-2 sentiment soft prompt with each kind into runs/sst2/ (about 70 min on 2 CPU
# cores), then evaluate each on the dev set. Usage: bash examples/sst2/train.sh [DATA_DIR]
set -euo pipefail
data=${1:-../shared/data/sst2}
out=${OUT:-runs/sst2}
common=(--data "$data/train.tsv" --input-col sentence --output-col label
        --label-map 0=negative,1=positive --template 'Review: {input}\nSentiment:'
        --batch-size 16 --val-split 256 --eval-every 50 --patience 4 --out "$out" --quiet
        --defaults '{"temperature": 0, "max_tokens": 1}')
init='text:Classify the sentiment of this movie review as positive or negative.'
[ "${SKIP_PREFIX:-}" ] || softserve train --kind prefix --task sst2-prefix --init "$init" "${common[@]}" --steps 1600 --eval-every 100 --patience 5
softserve train --kind prompt --task sst2-prompt --init "$init" --steps 150 "${common[@]}"
softserve train --kind p-tuning --task sst2-p-tuning --steps 150 "${common[@]}"
for kind in prefix prompt p-tuning; do
  softserve eval --prompt "sst2-$kind" --prompts "$out" --data "$data/dev.tsv" \
    --input-col content --output-col label --label-map 0=negative,1=positive \
    --json "$out/sst2-$kind.dev.json"
done
