#!/usr/bin/env bash
# Distil each long persona system prompt into a prefix soft prompt served as prompts/<persona>.
# 1. the frozen model answers the training questions under the long system prompt (teacher);
# 2. a soft prompt learns those answers without the system prompt;
# 3. on held-out questions (topics never seen in training): how closely the soft-prompted greedy
#    answer follows the teacher's, next to the bare model without any persona and the teacher.
# Usage: bash examples/personas/train.sh   (about 35 min on 2 CPU cores)
set -euo pipefail
here=$(dirname "$0")
out=${OUT:-runs/personas}
prompts=${PROMPTS:-prompts}
mkdir -p "$out"
for persona in pirate terse-expert kind-teacher; do
  system="$here/$persona.txt"
  softserve distill --system-prompt "@$system" --questions "$here/questions-train.txt" \
    --max-new-tokens 128 --out "$out/$persona-train.jsonl" --json "$out/$persona-train.counts.json"
  softserve distill --system-prompt "@$system" --questions "$here/questions-eval.txt" \
    --max-new-tokens 128 --out "$out/$persona-eval.jsonl" --json "$out/$persona-eval.counts.json"
  softserve train --kind prefix --task "$persona" --data "$out/$persona-train.jsonl" \
    --init "text:$(cat "$system")" --virtual-tokens 24 --steps 150 --batch-size 8 \
    --val-split 24 --eval-every 25 --patience 3 \
    --defaults '{"temperature": 0.7, "top_p": 0.9, "max_tokens": 128}' --description "$(head -c 120 "$system")..." \
    --out "$prompts" --quiet
  softserve eval --prompt "$persona" --prompts "$prompts" --data "$out/$persona-eval.jsonl" \
    --json "$out/$persona.eval.json"
  softserve eval --none --data "$out/$persona-eval.jsonl" --json "$out/$persona.none.json"
  # The teacher itself (long system prompt, batch-1 greedy): the ceiling of every figure.
  softserve eval --none --system-prompt "@$system" --data "$out/$persona-eval.jsonl" \
    --json "$out/$persona.teacher.json"
done
python "$here/report.py" --runs "$out" --prompts "$prompts"
