"""GET /tokenizer_info, POST /tokenize, POST /detokenize: the server's own tokenizer, in vLLM's
shapes (at the root, as vLLM serves them), so clients such as lm-eval tokenize exactly as the
server does and never fetch a tokenizer named after a task from a hub."""

from __future__ import annotations

from typing import Any

from app.api.deps import ApiKeyDep, ServicesDep
from app.api.errors import ApiError
from app.api.pipeline import resolve_target
from app.api.routes.common import ERRORS
from app.api.state import Services
from app.api.tokenizer_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
)
from app.render import RenderError, chat_text, with_system_prompt
from fastapi import APIRouter

router = APIRouter(dependencies=[ApiKeyDep], tags=["tokenizer"])


def _special(tokenizer: Any, name: str) -> str | None:
    value = getattr(tokenizer, name, None)
    return None if value is None else str(value)


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERRORS)
async def tokenizer_info(services: ServicesDep) -> TokenizerInfo:
    tokenizer = services.base.tokenizer
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__,
        eos_token=_special(tokenizer, "eos_token"),
        bos_token=_special(tokenizer, "bos_token"),
        pad_token=_special(tokenizer, "pad_token"),
        unk_token=_special(tokenizer, "unk_token"),
        chat_template=tokenizer.chat_template or None,
        model_max_length=services.engine.max_context,
        vocab_size=len(tokenizer),
    )


def _chat_ids(services: Services, body: TokenizeRequest) -> list[int]:
    """The messages as /v1/chat/completions renders them for this task (its system prompt)."""
    assert body.messages is not None
    style = resolve_target(services, body.model or services.base.spec.model_id).meta.style
    messages = with_system_prompt([m.to_message() for m in body.messages], style.system_prompt)
    try:
        text = chat_text(services.base.tokenizer, messages, body.add_generation_prompt)
    except RenderError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    special = bool(body.add_special_tokens)  # default off: the template writes its own
    return list(services.base.tokenizer(text, add_special_tokens=special)["input_ids"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, services: ServicesDep) -> TokenizeResponse:
    tokenizer = services.base.tokenizer
    if body.messages is not None:
        ids = _chat_ids(services, body)
    else:
        if body.model is not None:
            resolve_target(services, body.model)  # 404 for an unknown task, as everywhere
        special = body.add_special_tokens is not False
        ids = list(tokenizer(body.prompt, add_special_tokens=special)["input_ids"])
    strs = tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(
        count=len(ids),
        max_model_len=services.engine.max_context,
        tokens=ids,
        token_strs=[str(s) for s in strs] if strs is not None else None,
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, services: ServicesDep) -> DetokenizeResponse:
    tokenizer = services.base.tokenizer
    if body.model is not None:
        resolve_target(services, body.model)
    if not all(0 <= t < len(tokenizer) for t in body.tokens):
        raise ApiError(400, f"token ids must be in [0, {len(tokenizer)})", param="tokens")
    return DetokenizeResponse(prompt=str(tokenizer.decode(body.tokens)))
