"""Training/evaluation data: JSONL (input/output or chat messages), TSV and CSV.

Every problem is reported as `DataError` naming the file and the line, so a user can fix a
67,000-line file without bisecting it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.render import ChatMessage

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass(frozen=True)
class TextExample:
    """A raw input (the task template is applied later) and the expected output."""

    input: str
    output: str


@dataclass(frozen=True)
class ChatExample:
    """A conversation; the loss is taken on the assistant turns only."""

    messages: tuple[ChatMessage, ...]


Example = TextExample | ChatExample


@dataclass(frozen=True)
class Columns:
    """How a TSV/CSV row becomes a TextExample."""

    input_col: str = "input"
    output_col: str = "output"
    label_map: tuple[tuple[str, str], ...] = ()  # raw value -> output text

    def output_for(self, raw: str) -> str | None:
        if not self.label_map:
            return raw
        return dict(self.label_map).get(raw)


def parse_label_map(text: str) -> tuple[tuple[str, str], ...]:
    """'0=negative,1=positive' -> (('0', 'negative'), ('1', 'positive'))."""
    pairs = []
    for item in text.split(","):
        raw, sep, label = item.partition("=")
        if not sep or not raw.strip() or not label.strip():
            raise ValueError(f"--label-map item {item!r} is not of the form value=label")
        pairs.append((raw.strip(), label.strip()))
    if len({raw for raw, _ in pairs}) != len(pairs):
        raise ValueError(f"--label-map {text!r} maps one value twice")
    return tuple(pairs)


def _message(path: Path, line: int, raw: Any, index: int) -> ChatMessage:
    if not isinstance(raw, dict):
        raise DataError(path, f"messages[{index}] must be an object", line)
    role, content = raw.get("role"), raw.get("content")
    if role not in ROLES:
        raise DataError(path, f"messages[{index}].role must be one of {ROLES}, got {role!r}", line)
    if not isinstance(content, str):
        raise DataError(path, f"messages[{index}].content must be a string", line)
    return ChatMessage(role=role, content=content)


def _json_example(path: Path, line: int, raw: Any) -> Example:
    if not isinstance(raw, dict):
        raise DataError(path, f"expected a JSON object, got {type(raw).__name__}", line)
    if "messages" in raw:
        messages = raw["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(path, "'messages' must be a non-empty list", line)
        chat = tuple(_message(path, line, m, i) for i, m in enumerate(messages))
        if not any(m.role == "assistant" for m in chat):
            raise DataError(path, "'messages' has no assistant turn to learn from", line)
        return ChatExample(messages=chat)
    if "input" not in raw or "output" not in raw:
        raise DataError(path, "needs either 'input' and 'output', or 'messages'", line)
    for key in ("input", "output"):
        if not isinstance(raw[key], str):
            raise DataError(path, f"'{key}' must be a string, got {type(raw[key]).__name__}", line)
    if not raw["output"]:
        raise DataError(path, "'output' is empty", line)
    return TextExample(input=raw["input"], output=raw["output"])


def _read_jsonl(path: Path, text: str) -> list[Example]:
    examples = []
    for line, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        try:
            raw = json.loads(row)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, f"not valid JSON ({exc.msg} at column {exc.colno})", line
            ) from None
        examples.append(_json_example(path, line, raw))
    return examples


def _read_table(path: Path, text: str, delimiter: str, columns: Columns) -> list[Example]:
    lines = text.splitlines()
    if delimiter == "\t":  # TSV: quotes are text (SST-2 has plenty)
        reader = csv.reader(lines, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, "the file is empty") from None
    for name, flag in ((columns.input_col, "--input-col"), (columns.output_col, "--output-col")):
        if name not in header:
            raise DataError(path, f"no column {name!r} for {flag} (columns: {header})", 1)
    i_in, i_out = header.index(columns.input_col), header.index(columns.output_col)
    examples: list[Example] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(path, f"{len(row)} fields, the header has {len(header)}", line)
            output = columns.output_for(row[i_out])
            if output is None:
                known = [raw for raw, _ in columns.label_map]
                raise DataError(path, f"value {row[i_out]!r} is not in --label-map {known}", line)
            if not output:
                raise DataError(path, f"column {columns.output_col!r} is empty", line)
            examples.append(TextExample(input=row[i_in], output=output))
    except csv.Error as exc:
        raise DataError(path, f"malformed row ({exc})", reader.line_num) from None
    return examples


def load_examples(path: Path, columns: Columns | None = None) -> list[Example]:
    """Read a .jsonl/.json, .tsv or .csv file; raise DataError naming the line of a bad row."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text (byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        examples = _read_jsonl(path, text)
    elif suffix in (".tsv", ".csv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        examples = _read_table(path, text, delimiter, columns or Columns())
    else:
        raise DataError(path, f"unknown file type {suffix!r} (use .jsonl, .tsv or .csv)")
    if not examples:
        raise DataError(path, "no examples in the file")
    return examples
