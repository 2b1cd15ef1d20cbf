"""POST /v1/completions: text in, text out; the task's input template applies to string prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.api.delivery import ChoiceResult, finish_text
from app.api.deps import ApiKeyDep, RuntimeDep, ServicesDep
from app.api.errors import ApiError
from app.api.inputs import Prompts, completion_prompts
from app.api.logprobs import completion_logprobs
from app.api.pipeline import ChoiceOutput, Reply, generate
from app.api.routes.common import ERRORS
from app.api.sampling import check_supported, sampling_params
from app.api.schemas import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from app.engine import SamplingParams
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
        if body.logprobs is not None and body.logprobs > settings.max_logprobs:
            raise ApiError(400, f"logprobs must be <= {settings.max_logprobs}", param="logprobs")
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo together with logprobs is not supported", param="echo")

    def render(self, style: TaskStyle) -> Prompts:
        return completion_prompts(self.tokenizer, self.body.prompt, style)

    def sampling(self, meta: TaskMeta) -> SamplingParams:
        return sampling_params(
            self.body,
            meta.defaults,
            max_tokens=self.body.max_tokens,
            default_max_tokens=self.settings.default_max_tokens,
            logprobs=self.body.logprobs,
        )

    def _echo(self, reply: Reply, index: int) -> str:
        return reply.prompts.texts[index // self.body.n] if self.body.echo else ""

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
        if not text and out.finish_reason is None and not out.logprobs:
            return []
        logprobs = (
            completion_logprobs(self.tokenizer, list(out.logprobs))
            if self.body.logprobs is not None
            else None
        )
        chunk = CompletionChoice(
            index=choice.index,
            text=text,
            logprobs=logprobs,
            finish_reason=finish_text(out.finish_reason),
        )
        return [self._response(reply, [chunk], None).model_dump_json()]

    def usage_chunk(self, reply: Reply, usage: Usage) -> str:
        return self._response(reply, [], usage).model_dump_json()

    def respond(
        self, reply: Reply, results: list[ChoiceResult], usage: Usage
    ) -> CompletionResponse:
        choices = [
            CompletionChoice(
                index=i,
                text=self._echo(reply, i) + r.text,
                logprobs=completion_logprobs(self.tokenizer, r.logprobs, len(self._echo(reply, i)))
                if self.body.logprobs is not None
                else None,
                finish_reason=finish_text(r.finish_reason),
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
