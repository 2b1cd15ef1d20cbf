#!/usr/bin/env bash
# Context distillation of each persona into a prefix soft prompt served as prompts/<persona>.
# 1. teacher = the frozen model reading the persona's system prompt *and* its example dialogues
#    (<persona>.shots.jsonl); it answers generated questions (sampled, temperature 0.8), answers
#    failing the persona's check (<persona>.check.json) are dropped (rejection sampling);
# 2. the soft prompt is trained without that context to minimise KL(teacher || student) over the
#    teacher's whole next-token distribution at every answer position;
# 3. eval.py compares soft prompt / long prompt / bare model on held-out questions (forms and
#    topics the training never saw).
# Usage: bash examples/personas/train.sh   (on 2 CPU cores ~15 min of teacher sampling a persona,
# then 30-50 min of KL training; OBJECTIVE=ce PERSONAS=terse-expert for the shipped terse-expert,
# QUESTIONS=500 STEPS=200 PERSONAS=pirate for the shipped pirate: README, "Personas")
set -euo pipefail
here=$(dirname "$0")
out=${OUT:-runs/personas}
prompts=${PROMPTS:-prompts}
questions=${QUESTIONS:-1000}
steps=${STEPS:-600}
objective=${OBJECTIVE:-kl}
tokens=${TOKENS:-24}
mkdir -p "$out"
for persona in ${PERSONAS:-pirate terse-expert kind-teacher}; do
  system="$here/$persona.txt"
  softserve distill --persona "$system" --generate "$questions" --max-new-tokens 72 \
    --keep-passing --out "$out/$persona-train.jsonl" \
    --eval-out "$out/$persona-eval.jsonl" --json "$out/$persona-distill.json"
  softserve train --kind prefix --task "$persona" --data "$out/$persona-train.jsonl" \
    --distill-from "@$system" --objective "$objective" \
    --init "text:$(cat "$system")" --virtual-tokens "$tokens" --steps "$steps" --batch-size 8 \
    --val-split 40 --eval-every 50 --patience 3 \
    --defaults '{"temperature": 0.7, "top_p": 0.9, "max_tokens": 128}' \
    --description "$(head -c 120 "$system")..." --out "$prompts" --quiet
done
