"""POST /v1/completions: text in, text out; the task's input template applies to string prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.api.delivery import ChoiceResult, finish_text
from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.grammar import Grammar, Grammars
from app.api.inputs import Prompts, completion_prompts
from app.api.logprobs import PromptScores, completion_logprobs, vllm_prompt_logprobs
from app.api.pipeline import ChoiceOutput, Reply, generate
from app.api.routes.common import ERRORS
from app.api.sampling import check_supported, sampling_params
from app.api.schemas import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptLogprob,
    Usage,
)
from app.api.structured import response_constraint
from app.engine import SamplingParams, TokenLogprob
from app.registry import TaskMeta
from app.render import TaskStyle
from app.settings import Settings
from fastapi import APIRouter, Request

router = APIRouter(dependencies=[ApiKeyDep], tags=["inference"])


@dataclass(frozen=True)
class Completions:
    """The completions `Endpoint` of the generation pipeline."""

    body: CompletionRequest
    tokenizer: Any
    settings: Settings
    name: str = "completions"

    def check(self) -> None:
        body, settings = self.body, self.settings
        check_supported(body, settings.max_n)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix")
        if body.best_of not in (None, body.n):
            raise ApiError(400, "best_of must equal n", param="best_of")
        for name in ("logprobs", "prompt_logprobs"):
            if (getattr(body, name) or 0) > settings.max_logprobs:
                raise ApiError(400, f"{name} must be <= {settings.max_logprobs}", param=name)

    def _prompt_top(self) -> int | None:
        """How many alternatives the engine lists per prompt token (None: it scores none)."""
        body = self.body
        wanted = [body.prompt_logprobs, body.logprobs if body.echo else None]
        given = [k for k in wanted if k is not None]
        return max(given) if given else None

    def render(self, style: TaskStyle) -> Prompts:
        return completion_prompts(self.tokenizer, self.body.prompt, style)

    def sampling(self, meta: TaskMeta) -> SamplingParams:
        return sampling_params(
            self.body,
            meta.defaults,
            max_tokens=self.body.max_tokens,
            default_max_tokens=self.settings.default_max_tokens,
            logprobs=self.body.logprobs,
            prompt_logprobs=self._prompt_top(),
        )

    def constraint(self, meta: TaskMeta, grammars: Grammars) -> Grammar | None:
        return response_constraint(self.body.response_format, meta, grammars)

    def _echo(self, reply: Reply, index: int) -> str:
        """What the caller sent (not the task-templated text the model read)."""
        return reply.prompts.sent[index // self.body.n] if self.body.echo else ""

    def _logprobs(
        self,
        reply: Reply,
        index: int,
        logprobs: list[TokenLogprob],
        scores: tuple[TokenLogprob | None, ...],
    ) -> CompletionLogprobs | None:
        """The generated tokens' log-probabilities; with `echo` (and the row's first output),
        the prompt's tokens first: every token the model read, after any template."""
        body = self.body
        if body.logprobs is None:
            return None
        prompt = None
        if body.echo and scores:
            ids = reply.prompts.ids[index // body.n]
            prompt = PromptScores(ids=ids, scores=scores, top=body.logprobs)
        return completion_logprobs(self.tokenizer, logprobs, len(self._echo(reply, index)), prompt)

    def _prompt_logprobs(
        self, scores: tuple[TokenLogprob | None, ...]
    ) -> list[dict[str, PromptLogprob] | None] | None:
        top = self.body.prompt_logprobs
        if top is None or not scores:
            return None
        return vllm_prompt_logprobs(self.tokenizer, scores, top)

    def _response(
        self, reply: Reply, choices: list[CompletionChoice], usage: Usage | None
    ) -> CompletionResponse:
        return CompletionResponse(
            id=f"cmpl-{reply.request_id}",
            created=reply.created,
            model=reply.target.name,
            system_fingerprint=reply.target.fingerprint,
            choices=choices,
            usage=usage,
        )

    def chunks(self, reply: Reply, choice: ChoiceOutput) -> list[str]:
        out = choice.output
        text = self._echo(reply, choice.index) + out.text if choice.first else out.text
        scores = out.prompt_logprobs
        if not text and out.finish_reason is None and not out.logprobs and not scores:
            return []
        chunk = CompletionChoice(
            index=choice.index,
            text=text,
            logprobs=self._logprobs(reply, choice.index, list(out.logprobs), scores),
            finish_reason=finish_text(out.finish_reason),
            prompt_logprobs=self._prompt_logprobs(scores),
        )
        return [self._response(reply, [chunk], choice.usage).model_dump_json()]

    def usage_chunk(self, reply: Reply, usage: Usage) -> str:
        return self._response(reply, [], usage).model_dump_json()

    def respond(
        self, reply: Reply, results: list[ChoiceResult], usage: Usage
    ) -> CompletionResponse:
        choices = [
            CompletionChoice(
                index=i,
                text=self._echo(reply, i) + r.text,
                logprobs=self._logprobs(reply, i, r.logprobs, r.prompt_logprobs),
                finish_reason=finish_text(r.finish_reason),
                prompt_logprobs=self._prompt_logprobs(r.prompt_logprobs),
            )
            for i, r in enumerate(results)
        ]
        return self._response(reply, choices, usage)


@router.post(
    "/v1/completions", response_model=CompletionResponse, responses={**ERRORS, 408: ERRORS[503]}
)
async def create_completion(
    body: CompletionRequest, request: Request, runtime: RuntimeDep, services: ServicesDep
) -> Any:
    endpoint = Completions(body, services.base.tokenizer, services.settings)
    return await generate(runtime, services, request, endpoint)
