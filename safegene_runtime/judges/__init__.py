"""Judges behind one interface: ``judge_batch(prompts, responses) -> list[Verdict]``.

* :class:`RefusalJudge` ("refusal" | "compliance"): phrase rules over the whole response; pure Python, fast.
* :class:`PromptHarmJudge` ("harmful" | "benign"): MiniLM embeddings + a committed linear head; looks only at the
  prompt. torch/transformers are imported on first use, not here.
* :class:`ResponseHarmJudge` ("harmful_help" | "no_harmful_help"): MiniLM embeddings of prompt and response + a
  committed logistic head; decides whether the response gives substantive help with a harmful request.
* :class:`LLMJudge` ("unsafe" | "safe"): a Llama-Guard-style prompt sent to any OpenAI-compatible endpoint.

``build_judges(["refusal", "prompt_harm", "response_harm", "llm:<model>@<url>"])`` builds them from names (server config, CLI).
"""

from __future__ import annotations

import os
import re

from .base import Judge, Verdict
from .llm_judge import LLMJudge
from .prompt_harm import PromptHarmJudge
from .refusal import RefusalJudge, is_refusal
from .response_harm import ResponseHarmJudge

__all__ = ["Judge", "Verdict", "RefusalJudge", "is_refusal", "PromptHarmJudge", "ResponseHarmJudge", "LLMJudge", "build_judges",
           "build_judge"]

_LLM_SPEC = re.compile(r"^llm:(?P<model>.+?)@(?P<url>https?://\S+)$")


def build_judge(name: str) -> Judge:
    """One judge from its name: ``refusal``, ``prompt_harm``, ``response_harm`` or ``llm:<model>@<url>``.

    The LLM judge's API key comes from ``$SAFEGENE_JUDGE_API_KEY`` or ``$OPENAI_API_KEY`` (never from the name,
    so keys do not end up in configs or logs).
    """
    key = name.strip()
    if key == "refusal":
        return RefusalJudge()
    if key in ("prompt_harm", "prompt-harm"):
        return PromptHarmJudge.load_default()
    if key in ("response_harm", "response-harm"):
        return ResponseHarmJudge.load_default()
    m = _LLM_SPEC.match(key)
    if m:
        api_key = os.environ.get("SAFEGENE_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return LLMJudge(m["url"], m["model"], api_key=api_key)
    raise ValueError(
        f"unknown judge {name!r}: expected 'refusal', 'prompt_harm', 'response_harm' or "
        "'llm:<model>@<http(s)://endpoint/v1>'"
    )


def build_judges(names: list[str]) -> list[Judge]:
    """Judges for a list of names (see :func:`build_judge`); duplicates are an error."""
    seen: set[str] = set()
    out: list[Judge] = []
    for n in names:
        if n in seen:
            raise ValueError(f"judge {n!r} listed twice")
        seen.add(n)
        out.append(build_judge(n))
    return out
