#!/usr/bin/env bash
# Persona figures on held-out questions (forms and topics the training never saw), side by side:
# soft prompt / system prompt + example dialogues (the teacher) / system prompt only / bare model.
# Needs train.sh's runs/personas/<persona>-eval.jsonl. Usage: bash examples/personas/eval.sh
# (about 3 min a persona on 2 CPU cores); then TTFT over HTTP: python -m bench.persona_ttft
set -euo pipefail
here=$(dirname "$0")
out=${OUT:-runs/personas}
prompts=${PROMPTS:-prompts}
for persona in ${PERSONAS:-pirate terse-expert kind-teacher}; do
  softserve eval --persona "$here/$persona.txt" --prompt "$persona" --prompts "$prompts" --record \
    --facts "$here/facts.jsonl" \
    --data "$out/$persona-eval.jsonl" --json "$out/$persona-figures.json"
done
