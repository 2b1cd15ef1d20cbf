"""The one Settings object: built once at start-up (CLI flags over SOFTSERVE_* environment
variables over defaults) and passed down as plain values."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.dtype import DType, Quantize
from app.location import S3Location, S3Options, parse_location


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "softserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOFTSERVE_", extra="ignore", frozen=True)

    model: str = Field(
        "default", description="'default', a Hugging Face model folder or a .gguf file"
    )
    prompts: Path | S3Location = Field(
        Path("prompts"), description="the prompt registry: a folder, or s3://BUCKET/PREFIX"
    )
    s3_endpoint_url: str | None = Field(
        None, description="an S3-compatible server for s3:// prompts (default: AWS)"
    )
    registry_gc_grace_s: float = Field(
        60.0, gt=0, description="s3:// prompts: superseded versions are deleted this long after"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = "cpu"
    # The defaults are the fastest setting whose quality holds (README: bench/precision).
    dtype: DType = DType.BFLOAT16
    quantize: Quantize = Field(
        Quantize.AUTO,
        description="int8: weight-only int8 linears; w8a8: int8 activations too for larger "
        "steps; auto: w8a8 with bfloat16 on a CPU",
    )
    int8_max_tokens: int = Field(
        8,
        ge=0,
        description="steps of at most this many tokens use weight-only int8 kernels; larger ones "
        "bf16 (int8) or int8 activations too (w8a8)",
    )
    native_decode: bool = Field(
        True,
        description="a lone stream's decode step in Softserve's C kernel where the CPU has "
        "AVX-512 VNNI and a C compiler is at hand (int8 weights); off: torch's kernels",
    )
    backend: Literal["auto", "lean", "hf"] = Field(
        "auto", description="lean: Softserve's Llama-family forward; hf: the model's own"
    )
    prefill_chunk: int = Field(256, ge=1, description="prompt tokens prefilled per engine step")
    cache_dir: Path = Field(default_factory=_default_cache_dir)

    max_batch_size: int = Field(32, ge=1, le=1024)
    max_in_flight: int = Field(1024, ge=1, description="engine rows admitted (waiting + running)")
    max_context: int | None = Field(None, ge=1)
    kv_cache_mib: float = Field(256.0, gt=0)
    max_virtual_tokens: int = Field(256, ge=1)

    default_max_tokens: int = Field(16, ge=1, description="completions without max_tokens")
    default_chat_max_tokens: int = Field(512, ge=1, description="chat without max_tokens")
    max_n: int = Field(8, ge=1)
    max_logprobs: int = Field(20, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="JSON request bodies")
    max_upload_bytes: int = Field(32 << 20, ge=1024, description="a PUT /v1/prompts body")
    registry_poll_s: float = Field(0.5, gt=0, description="how often to pick up changes on disk")

    max_requests: int = Field(256, ge=1, description="concurrent generation requests; 429 past it")
    max_queued_tokens: int = Field(
        1 << 20, ge=1, description="prompt + max_tokens waiting; 429 past it"
    )
    request_timeout_s: float = Field(600.0, gt=0, description="per-request deadline")
    drain_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long running requests may finish"
    )
    health_stall_s: float = Field(
        2.0, gt=0, description="no engine progress for this long: unhealthy"
    )
    top_task_labels: int = Field(20, ge=0, description="tasks with their own metric label")
    log_prompts: bool = Field(False, description="include prompt text in request logs")

    api_key: SecretStr | None = None
    admin_key: SecretStr | None = None
    log_level: str = "info"

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_location(cls, value: object) -> object:
        # `s3://bucket/prefix` must not become a Path (which would fold the '//').
        return parse_location(value) if isinstance(value, str) else value

    @property
    def s3_options(self) -> S3Options:
        return S3Options(endpoint_url=self.s3_endpoint_url, gc_grace_s=self.registry_gc_grace_s)

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # `SOFTSERVE_API_KEY=` (empty) means "no key", not "the empty key".
        return None if value == "" else value
