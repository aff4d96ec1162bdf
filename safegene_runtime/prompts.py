"""Prompt and shot files: JSONL and CSV, read the same way by every command.

Accepted forms, one example per line / row:

* JSONL ``{"prompt": "..."}`` (optionally with ``"response"``/``"completion"``/``"answer"`` and any other fields);
* JSONL ``{"messages": [{"role": "user", "content": ...}, ...]}`` (chat form; the last assistant message, if any,
  becomes the response, the rest the conversation);
* CSV with a header; the prompt column is ``--column`` or, by default, the first of
  ``prompt, Behavior, goal, text, question``.

Every bad line is reported with its file and line number; nothing is silently skipped.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .artifacts import atomic_write_text

PROMPT_COLUMNS = ("prompt", "Behavior", "goal", "text", "question")
RESPONSE_KEYS = ("response", "completion", "answer", "target")


class PromptFileError(ValueError):
    """A prompt file is missing or malformed; the message names the file and line."""


@dataclass
class Example:
    """One prompt (as chat messages) with an optional reference response and the row's other fields."""

    messages: list[dict[str, str]]
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The last user message: what judges and de-duplication look at."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return m.get("content", "")
        return self.messages[-1].get("content", "") if self.messages else ""


def _from_record(rec: dict[str, Any], where: str, column: str | None) -> Example:
    if "messages" in rec and column is None:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise PromptFileError(f"{where}: 'messages' must be a non-empty list of {{role, content}} strings")
        response = None
        if msgs[-1]["role"] == "assistant":
            response, msgs = msgs[-1]["content"], msgs[:-1]
        if not msgs:
            raise PromptFileError(f"{where}: 'messages' holds only an assistant message")
        meta = {k: v for k, v in rec.items() if k != "messages"}
        return Example(messages=[dict(m) for m in msgs], response=response, meta=meta)
    keys = (column,) if column else PROMPT_COLUMNS
    key = next((k for k in keys if k in rec), None)
    if key is None:
        raise PromptFileError(f"{where}: no prompt field (expected one of {', '.join(keys)} or 'messages')")
    text = rec[key]
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(f"{where}: field {key!r} must be a non-empty string")
    response = next((rec[k] for k in RESPONSE_KEYS if isinstance(rec.get(k), str)), None)
    meta = {k: v for k, v in rec.items() if k != key}
    return Example(messages=[{"role": "user", "content": text}], response=response, meta=meta)


def read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``("<path>:<line>", record)`` for each non-blank line; invalid JSON raises naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{i}", json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{i}: not valid JSON ({e.msg})") from e


def load_examples(path: str | Path, *, column: str | None = None, limit: int | None = None) -> list[Example]:
    """Read a JSONL (``.jsonl``/``.json`` lines) or CSV file into examples."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: file not found")
    out: list[Example] = []
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise PromptFileError(f"{path}: empty CSV (no header)")
            if column and column not in reader.fieldnames:
                raise PromptFileError(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)})")
            for i, row in enumerate(reader, start=2):
                out.append(_from_record(dict(row), f"{path}:{i}", column))
                if limit and len(out) >= limit:
                    break
    else:
        for where, rec in read_jsonl(path):
            if isinstance(rec, str):
                rec = {"prompt": rec}
            if not isinstance(rec, dict):
                raise PromptFileError(f"{where}: each line must be a JSON object or string")
            out.append(_from_record(rec, where, column))
            if limit and len(out) >= limit:
                break
    if not out:
        raise PromptFileError(f"{path}: holds no examples")
    return out


def load_prompts(path: str | Path, *, column: str | None = None, limit: int | None = None) -> list[str]:
    """Just the prompt texts (last user message) of a file."""
    return [e.prompt for e in load_examples(path, column=column, limit=limit)]


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically."""

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
