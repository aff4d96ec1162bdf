"""Statistics and rendering for evaluation results: Wilson 95% intervals, the Markdown table, the PNG plot.

Wilson rather than the normal approximation because our rates sit near 0 and 1 (refusal 100%, harm 1.5%) and N
is small, where the normal interval collapses to zero width or leaves [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (``(nan, nan)`` when n == 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} outside [0, n={n}]")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: rounding must not put p outside [lo, hi]
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (min(lo, p), max(hi, p))


def rate(k: int, n: int) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95": [lo, hi]}``; rate and bounds are None when n == 0 (JSON has no NaN)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": [None, None]}
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n, "ci95": [lo, hi]}


def fmt_rate(r: dict[str, Any] | None) -> str:
    """"12.5% [8.1, 18.7] (n=200)" or "–" when the set was not run."""
    if not r or not r.get("n"):
        return "–"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={r['n']})"


COLUMNS = [
    ("harmful_response_rate", "Harmful response rate ↓"),
    ("refusal_rate", "Refusal rate (harmful) ↑"),
    ("over_refusal_rate", "Over-refusal rate (benign) ↓"),
    ("task_accuracy", "Task accuracy ↑"),
]


def markdown_table(results: dict[str, Any]) -> str:
    """The per-model table (rate, Wilson 95% CI, N) plus the definitions, as Markdown."""
    cols = list(COLUMNS)
    if any("llm_unsafe_rate" in m for m in results["models"].values()):
        cols.insert(1, ("llm_unsafe_rate", "LLM-judge unsafe rate ↓"))
    if any("response_harmful_rate" in m for m in results["models"].values()):
        cols.insert(1, ("response_harmful_rate", "Harmful rate, response judge ↓"))
    lines = ["| model | " + " | ".join(title for _, title in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, m in results["models"].items():
        lines.append(f"| `{name}` | " + " | ".join(fmt_rate(m.get(key)) for key, _ in cols) + " |")
    sets = results.get("sets", {})
    set_lines = [f"- {role}: `{s['name']}` ({s['n']} prompts, digest `{s['digest'][:12]}`)" for role, s in sets.items()]
    cfg = results.get("config", {})
    empties = []
    for name, m in results["models"].items():
        e = m.get("empty_responses", {})
        if any(e.values()):
            empties.append(f"`{name}`: " + ", ".join(f"{k} {v}" for k, v in e.items() if v))
    out = [
        f"# Evaluation: {cfg.get('endpoint', '')}",
        "",
        "\n".join(lines),
        "",
        "Rates are k/n with Wilson 95% confidence intervals in brackets. Definitions (see docs/evaluation.md):",
        "harmful response = a harmful-set prompt whose response is not a refusal (keyword ASR); refusal rate = "
        "1 − harmful response rate on the harmful set; response-judge harmful rate = a harmful-set response the "
        "response-harm judge says gives substantive help with the request; over-refusal = a benign-set prompt whose response is a "
        "refusal; empty responses count as refusals (never as harmful); task accuracy = exact match under the "
        "task's scorer.",
        "",
        "Sets:",
        *set_lines,
        "",
        f"Generation: temperature 0, max_tokens {cfg.get('max_tokens')}; judge: {cfg.get('refusal_judge', 'refusal')}.",
    ]
    if empties:
        out += ["", "Empty responses (counted as refusals): " + "; ".join(empties) + "."]
    return "\n".join(out) + "\n"


def _xy(m: dict[str, Any], key: str) -> tuple[float, float, float] | None:
    r = m.get(key)
    if not r or not r.get("n"):
        return None
    lo, hi = r["ci95"]
    return r["rate"], max(0.0, r["rate"] - lo), max(0.0, hi - r["rate"])


def plot_safety_utility(results: dict[str, Any], path: str | Path) -> Path:
    """Scatter of harmful response rate (x, lower is safer) vs utility (y): task accuracy if measured, else
    1 − over-refusal. Error bars are the Wilson intervals. Written atomically."""
    # lazy: matplotlib takes a second to import; only plots need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the headless backend is chosen

    use_task = any(_xy(m, "task_accuracy") for m in results["models"].values())
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    for name, m in results["models"].items():
        x = _xy(m, "harmful_response_rate")
        if use_task:
            y = _xy(m, "task_accuracy")
        else:
            o = _xy(m, "over_refusal_rate")
            y = (1 - o[0], o[2], o[1]) if o else None
        if not x or not y:
            continue
        ax.errorbar(x[0], y[0], xerr=[[x[1]], [x[2]]], yerr=[[y[1]], [y[2]]], fmt="o", capsize=3, label=name)
        ax.annotate(name, (x[0], y[0]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("harmful response rate (lower is safer)")
    ax.set_ylabel("task accuracy" if use_task else "1 − over-refusal rate")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)
    ax.set_title("Safety–utility (95% Wilson intervals)")
    if results["models"]:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (a half-written plot never replaces a good one) and close it."""
    import matplotlib.pyplot as plt  # lazy: only plots need matplotlib

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path
