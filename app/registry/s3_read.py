"""Reading one version a pointer names, checking everything as strictly as an upload."""

from __future__ import annotations

import hashlib

from app.model.spec import ModelSpec
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import InvalidPrompt
from app.registry.location import S3Location
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE, Limits
from app.registry.s3_bucket import Bucket, ObjectMissing
from app.registry.s3_layout import Pointer, object_key


def read_version(
    bucket: Bucket, where: S3Location, name: str, pointer: Pointer, spec: ModelSpec, limits: Limits
) -> PromptEntry:
    """Fetch the version's objects (each size-capped before its body is read), check the tensor
    against the sha256 the pointer names, and validate it all. Raises InvalidPrompt."""
    assert pointer.version_id is not None
    data: dict[str, bytes] = {}
    for file in pointer.files:
        limit = limits.max_tensor_bytes if file == TENSOR_FILE else limits.max_config_bytes
        try:
            data[file] = bucket.get(object_key(where, name, pointer.version_id, file), limit).data
        except ObjectMissing:
            raise InvalidPrompt(f"missing from version {pointer.version_id}", file=file) from None
    # An object replaced after its version was written (by hand, or by tampering) is refused.
    if hashlib.sha256(data[TENSOR_FILE]).hexdigest() != pointer.sha256:
        raise InvalidPrompt(
            "does not match the sha256 its pointer names (changed after it was written)",
            file=TENSOR_FILE,
        )
    files = PromptFiles(data[CONFIG_FILE], data[TENSOR_FILE], data.get(TASK_FILE))
    return build_entry(
        name, files, spec=spec, limits=limits, version=pointer.version, created=pointer.created
    )
