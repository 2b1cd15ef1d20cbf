#!/usr/bin/env bash
# Go on distilling a persona with more teacher answers: sample MORE new ones (a fresh question
# draw, --seed SEED), append them to train.sh's chats, and train on from a saved prompt of the
# same size (FROM, e.g. a 48-token run of train.sh with TOKENS=48) by KL, storing the table in
# float16 (half the bytes; served as float32). The held-out questions stay train.sh's.
# Usage: PERSONAS=kind-teacher FROM=runs/p48 bash examples/personas/more.sh
# (on 2 CPU cores ~17 min of teacher sampling per 1800 questions, then ~45 min for 500 steps)
set -euo pipefail
here=$(dirname "$0")
out=${OUT:-runs/personas}
prompts=${PROMPTS:-prompts}
more=${MORE:-1800}
seed=${SEED:-1}
steps=${STEPS:-500}
tokens=${TOKENS:-48}
from=${FROM:?set FROM to the prompts folder to go on from, e.g. runs/p48}
for persona in ${PERSONAS:-pirate terse-expert kind-teacher}; do
  system="$here/$persona.txt"
  softserve distill --persona "$system" --generate "$more" --seed "$seed" --max-new-tokens 72 \
    --keep-passing --out "$out/$persona-more-$seed.jsonl" --json "$out/$persona-more-$seed.json"
  cat "$out/$persona-train.jsonl" "$out/$persona-more-$seed.jsonl" > "$out/$persona-all.jsonl"
  softserve train --kind prefix --task "$persona" --data "$out/$persona-all.jsonl" \
    --distill-from "@$system" --objective kl --init "from:$from/$persona" \
    --virtual-tokens "$tokens" --steps "$steps" --lr 1e-3 --batch-size 8 --seed "$((seed + 3))" \
    --val-split 40 --eval-every 50 --patience 3 --store-dtype float16 \
    --defaults '{"temperature": 0.7, "top_p": 0.9, "max_tokens": 128}' \
    --description "$(head -c 120 "$system")..." --out "$prompts" --quiet
done
