"""The engine: pure torch. Soft prompts become per-task KV prefixes; mixed-task rows share steps."""

from app.engine.engine import Backend, Engine, EngineConfig, SchedulerOutput
from app.engine.kv import KVPrefix
from app.engine.prefix import PrefixCache, PrefixCacheStats, compute_kv_prefix
from app.engine.types import (
    EngineFull,
    EngineStats,
    FinishReason,
    GenerationRequest,
    RequestError,
    RequestOutput,
    SamplingParams,
    StepRecord,
    StepResult,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "Backend",
    "Engine",
    "EngineConfig",
    "EngineFull",
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "KVPrefix",
    "PrefixCache",
    "PrefixCacheStats",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "SchedulerOutput",
    "StepRecord",
    "StepResult",
    "TokenLogprob",
    "TopLogprob",
    "compute_kv_prefix",
]
