"""A tiny, seeded Llama with grouped-query attention and a real byte-level BPE tokenizer,
built in-process: no files from outside, a few MB of memory, milliseconds per step."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from app.model import FrozenModel
from app.model.loader import freeze

TINY_MODEL_ID = "tiny-llama"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Review: a great and moving film. Sentiment: positive",
    "Review: dull, slow and far too long. Sentiment: negative",
    "Hello world! Stop here. END of line. 0123456789 ,.;:!?'\"()[]{}<>/-_=+*&^%$#@",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in the real model
        max_position_embeddings=512,
        initializer_range=0.2,  # peaked logits: greedy choices are far from ties
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attn_implementation="sdpa",
    )


def tiny_base(seed: int = 0) -> FrozenModel:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tokenizer)).to(torch.float32)
    return freeze(model, tokenizer, TINY_MODEL_ID, torch.device("cpu"))


def in_dtype(base: FrozenModel, dtype: torch.dtype) -> FrozenModel:
    """A copy of the model in `dtype`, as `from_pretrained(dtype=...)` loads one: its rotary
    frequencies stay float32."""
    model = copy.deepcopy(base.model).to(dtype)
    model.model.rotary_emb.inv_freq = base.model.model.rotary_emb.inv_freq.clone()
    return freeze(model, base.tokenizer, TINY_MODEL_ID, base.device)


def save_tiny(base: FrozenModel, folder: Path) -> Path:
    """Write the tiny model as a Hugging Face folder (for `--model PATH` and server tests)."""
    base.model.save_pretrained(str(folder))
    base.tokenizer.save_pretrained(str(folder))
    return folder
