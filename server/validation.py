"""What the middleware checks and reads in a generation request, before vLLM sees it.

:func:`validate_generate` turns what vLLM would reject less clearly (or accept) into OpenAI-style 400s naming the
parameter, and bounds the fan-out (prompts x ``n``) of one request. :func:`judge_prompts` gives the judges one
prompt per prompt in the request, as text or as token ids (decoded in the judge process).
"""

from __future__ import annotations

from typing import Any

from .errors import HTTPError

#: the most completions one request may ask for (prompts in a completions list x n), unless the config says otherwise
DEFAULT_MAX_CHOICES = 16


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def completion_prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """The prompts of a completions request: a string, a list of strings, token ids, or a list of token-id lists."""
    p = body.get("prompt")
    if isinstance(p, str) or _is_ids(p):
        return [p]
    if isinstance(p, list):
        return [x for x in p if isinstance(x, str) or _is_ids(x)]
    return []


def judge_prompts(kind: str, body: dict[str, Any]) -> list[str | list[int]]:
    """What the judges see as the prompt(s): the last user message (chat), or every prompt (completions)."""
    if kind == "chat":
        users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        return [_text_of(users[-1].get("content")) if users else ""]
    return completion_prompts(body)


def prompt_text(kind: str, body: dict[str, Any]) -> str:
    """The first prompt as text ('' for token ids): what logs and simple callers show."""
    first = (judge_prompts(kind, body) or [""])[0]
    return first if isinstance(first, str) else ""


def validate_generate(kind: str, body: Any, max_model_len: int, max_choices: int = DEFAULT_MAX_CHOICES) -> None:
    """OpenAI-style 400s for what vLLM would otherwise reject less clearly (or accept)."""
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object", "invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise HTTPError(400, "you must provide a model parameter", "missing_required_parameter", "model")
    prompts = 1
    if kind == "chat":
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise HTTPError(400, "'messages' must be a non-empty list of {role, content} objects",
                            "missing_required_parameter", "messages")
    else:
        p = body.get("prompt")
        if p is None or (isinstance(p, (str, list)) and len(p) == 0):
            raise HTTPError(400, "'prompt' is required", "missing_required_parameter", "prompt")
        if isinstance(p, list) and not _is_ids(p):
            if not (all(isinstance(x, str) for x in p) or all(_is_ids(x) for x in p)):
                raise HTTPError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list "
                                "of token-id lists (not a mix)", "invalid_value", "prompt")
            prompts = len(p)
        if prompts > max_choices:
            raise HTTPError(400, f"'prompt' holds {prompts} prompts; this server answers at most {max_choices} "
                            "completions per request", "invalid_value", "prompt")
    for key in ("max_tokens", "max_completion_tokens"):
        if key not in body or body[key] is None:
            continue
        v = body[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise HTTPError(400, f"'{key}' must be an integer", "invalid_value", key)
        if v < 1:
            raise HTTPError(400, f"'{key}' must be at least 1, got {v}", "invalid_value", key)
        if v > max_model_len:
            raise HTTPError(400, f"'{key}' is {v} but this model's context is {max_model_len} tokens",
                            "invalid_value", key)
    for key in ("n", "best_of"):
        v = body.get(key, 1)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HTTPError(400, f"'{key}' must be a positive integer", "invalid_value", key)
        if prompts * v > max_choices:
            what = f"{prompts} prompts x {key}={v}" if prompts > 1 else f"{key}={v}"
            raise HTTPError(400, f"{what} asks for {prompts * v} completions; this server answers at most "
                            f"{max_choices} per request", "invalid_value", key)
