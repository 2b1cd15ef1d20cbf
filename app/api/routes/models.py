"""GET /v1/models: the base model and every task, in OpenAI's list shape."""

from __future__ import annotations

from app.api.deps import ApiKeyDep, ServicesDep
from app.api.routes.common import ERRORS
from app.api.schemas import ModelCard, ModelList
from fastapi import APIRouter

router = APIRouter(dependencies=[ApiKeyDep], tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(services: ServicesDep) -> ModelList:
    base_id = services.base.spec.model_id
    cards = [
        ModelCard(id=base_id, created=int(services.started), owned_by="softserve", root=base_id)
    ]
    cards += [
        ModelCard(
            id=e.name, created=int(e.created), owned_by="softserve", root=base_id, kind=e.kind.value
        )
        for e in services.registry.entries()
    ]
    return ModelList(data=cards)
