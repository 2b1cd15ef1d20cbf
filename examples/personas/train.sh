#!/usr/bin/env bash
# Context distillation of each persona into a prefix soft prompt served as prompts/<persona>.
# 1. teacher = the frozen model reading the persona's system prompt *and* its example dialogues
#    (<persona>.shots.jsonl); it answers generated questions (sampled, temperature 0.8), answers
#    failing the persona's check (<persona>.check.json) are dropped (rejection sampling);
# 2. the soft prompt is trained without that context to minimise KL(teacher || student) over the
#    teacher's whole next-token distribution at every answer position;
# 3. eval.py compares soft prompt / long prompt / bare model on held-out questions (forms and
#    topics the training never saw).
# MORE=N samples N more teacher answers from a second question draw (--seed 1) and trains on both.
# INIT=teacher starts from the teacher's own context compressed (default: the system prompt's text).
# ON_TOPIC=1 also drops sampled answers that do not name their question's topic (--keep-on-topic).
# OBJECTIVE=kl+ce adds the kept answers' cross-entropy, CE_WEIGHT=W times (default 1), to the KL.
# Usage: bash examples/personas/train.sh   (on 2 CPU cores ~15 min of teacher sampling a persona,
# then 30-50 min of KL training). The shipped prompts (README, "Personas"):
#   MORE=1000 TOKENS=48 INIT=teacher ON_TOPIC=1 OBJECTIVE=kl+ce PERSONAS=pirate  (twelve dialogues)
#   MORE=1000 TOKENS=48 INIT=teacher PERSONAS=terse-expert       (twelve example dialogues)
#   TOKENS=48 STEPS=500 PERSONAS=kind-teacher                  (then more.sh)
set -euo pipefail
here=$(dirname "$0")
out=${OUT:-runs/personas}
prompts=${PROMPTS:-prompts}
questions=${QUESTIONS:-1000}
steps=${STEPS:-600}
objective=${OBJECTIVE:-kl}
tokens=${TOKENS:-24}
more=${MORE:-0}
mkdir -p "$out"
for persona in ${PERSONAS:-pirate terse-expert kind-teacher}; do
  system="$here/$persona.txt"
  softserve distill --persona "$system" --generate "$questions" --max-new-tokens 72 \
    --keep-passing ${ON_TOPIC:+--keep-on-topic} --out "$out/$persona-train.jsonl" \
    --eval-out "$out/$persona-eval.jsonl" --json "$out/$persona-distill.json"
  data="$out/$persona-train.jsonl"
  if [ "$more" -gt 0 ]; then
    softserve distill --persona "$system" --generate "$more" --seed 1 --max-new-tokens 72 \
      --keep-passing ${ON_TOPIC:+--keep-on-topic} --out "$out/$persona-more-1.jsonl" \
      --json "$out/$persona-more-1.json"
    data="$out/$persona-all.jsonl"
    cat "$out/$persona-train.jsonl" "$out/$persona-more-1.jsonl" > "$data"
  fi
  softserve train --kind prefix --task "$persona" --data "$data" \
    --distill-from "@$system" --objective "$objective" --ce-weight "${CE_WEIGHT:-1}" \
    --init "${INIT:-text:$(cat "$system")}" --virtual-tokens "$tokens" --steps "$steps" --batch-size 8 \
    --val-split 40 --eval-every 50 --patience 3 \
    --defaults '{"temperature": 0.7, "top_p": 0.9, "max_tokens": 128}' \
    --store-dtype "${STORE_DTYPE:-float16}" \
    --description "$(head -c 120 "$system")..." --out "$prompts" --quiet
done
