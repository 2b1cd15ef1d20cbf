"""GET /v1/models: the base model and every task, in OpenAI's list shape."""

from __future__ import annotations

from app.api.deps import ApiKeyDep, ServicesDep
from app.api.errors import ApiError
from app.api.routes.common import ERRORS
from app.api.schemas import ModelCard, ModelList
from app.api.state import Services
from app.registry import PromptEntry, UnknownTask
from fastapi import APIRouter

router = APIRouter(dependencies=[ApiKeyDep], tags=["models"])


def _base_card(services: Services) -> ModelCard:
    base_id = services.base.spec.model_id
    return ModelCard(id=base_id, created=int(services.started), owned_by="softserve", root=base_id)


def _task_card(services: Services, entry: PromptEntry) -> ModelCard:
    return ModelCard(
        id=entry.name,
        created=int(entry.created),
        owned_by="softserve",
        root=services.base.spec.model_id,
        kind=entry.kind.value,
    )


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(services: ServicesDep) -> ModelList:
    cards = [_base_card(services)]
    cards += [_task_card(services, e) for e in services.registry.entries()]
    return ModelList(data=cards)


@router.get("/v1/models/{model}", response_model=ModelCard, responses=ERRORS)
async def retrieve_model(model: str, services: ServicesDep) -> ModelCard:
    if model == services.base.spec.model_id:
        return _base_card(services)
    try:
        return _task_card(services, services.registry.get(model))
    except UnknownTask:
        raise ApiError(
            404, f"The model '{model}' does not exist", param="model", code="model_not_found"
        ) from None
