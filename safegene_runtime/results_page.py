"""The results page's per-setting tables and safety–utility plot, from per-prompt verdicts (issue 21, item 5).

The decision rule (:mod:`.decision`) answers "does a tuned baseline beat SafeGene?"; a reader of the results page
first wants every method's numbers side by side: per setting (the adapters trained clean, the ones trained with 10%
harmful data), per adapter, A, the adapter alone, SafeGene (mean over seeds, with the range) and each baseline, on
both harm judges, over-refusal and task accuracy, each with its 95% interval, and whether the three targets are met
under each judge (:func:`.decision.targets`, the gate's thresholds). The plot shows the same numbers as one panel per
adapter: harmful rate against over-refusal with the target box drawn, a method that loses the task drawn hollow.

Inputs are the outcomes :func:`.decision.load_outcomes` reads (model names as the rule parses them); pure apart
from writing the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

from .decision import (ALONE, HARM_METRICS, DecisionConfig, MethodRuns, Outcomes, TargetCheck, baselines_of,
                       fmt_summary, group, require_base, summarize, targets)
from .gate import GateThresholds
from .report import save_figure

#: the columns of a table: the two harm numbers, then the two utility numbers
COLUMNS = (("harmful_response_rate", "HR, phrase judge"), ("response_harmful_rate", "HR, response judge"),
           ("over_refusal_rate", "over-refusal"), ("task_accuracy", "task accuracy"))


def setting_of(adapter: str) -> str:
    """The demo family's naming: ``<task>-<setting>`` (``sentiment-clean``, ``topic-mix10``)."""
    return adapter.rsplit("-", 1)[-1] if "-" in adapter else adapter


def method_order(methods: Sequence[str], cfg: DecisionConfig = DecisionConfig()) -> list[str]:
    """The adapter alone, SafeGene, then the baselines by name."""
    first = [m for m in (ALONE, cfg.safegene) if m in methods]
    return first + sorted(m for m in methods if m not in first)


def shown(outcomes: Mapping[str, dict[str, Outcomes]], base: str, cfg: DecisionConfig = DecisionConfig()
          ) -> dict[str, dict[str, MethodRuns]]:
    """What the page shows, as the rule decides it: every adapter with SafeGene measured, and on it the adapter
    alone, SafeGene and the baselines (``cfg.baselines``, or every other method but SafeGene's variants)."""
    require_base(outcomes, base)
    grouped, _ = group({m: o for m, o in outcomes.items() if m != base}, cfg)
    out = {}
    for a, ms in sorted(grouped.items()):
        if cfg.safegene in ms:
            keep = {ALONE, cfg.safegene, *baselines_of(ms, cfg)}
            out[a] = {m: r for m, r in ms.items() if m in keep}
    return out


def _met(check: TargetCheck | None) -> str:
    if check is None:
        return "–"
    return {True: "**yes**", False: "no", None: "–"}[check.all_met]


def tables(outcomes: Mapping[str, dict[str, Outcomes]], base: str, *, cfg: DecisionConfig = DecisionConfig(),
           thresholds: GateThresholds = GateThresholds(), setting: Callable[[str], str] = setting_of) -> str:
    """One Markdown table per setting: for each adapter, the base (``base``: A), the adapter alone, SafeGene and
    every baseline, the four numbers with intervals (seeded methods: mean over seeds, range), and whether the three
    targets are met under the phrase judge and the response judge."""
    grouped = shown(outcomes, base, cfg)
    checks = {(c.adapter, c.method, c.harm_metric): c for c in targets(outcomes, base, thresholds, cfg)}
    base_row = {k: summarize({None: outcomes[base][k]}, k, cfg) if outcomes[base].get(k) else None
                for k, _ in COLUMNS}
    judges = [(j, HARM_METRICS[j]) for j in cfg.harm_judges]
    head = ("| adapter | method | seeds | " + " | ".join(t for _, t in COLUMNS) + " | "
            + " | ".join(f"targets ({j})" for j, _ in judges) + " |")
    rule = "|" + "---|" * (3 + len(COLUMNS) + len(judges))
    out = [f"Targets: HR ≤ {base} + {thresholds.max_harm_increase:g} points, over-refusal ≤ {base} + "
           f"{thresholds.max_over_refusal_increase:g}, task ≥ the adapter alone − {thresholds.max_task_drop:g} (means "
           f"over seeds, point estimates). Rates: mean [95% interval] (n prompts); a seeded method shows the range "
           f"over its seeds.", ""]
    for name in dict.fromkeys(setting(a) for a in sorted(grouped)):
        out += [f"#### Setting: {name}", "", head, rule,
                f"| – | {base} (aligned base) | – | " + " | ".join(fmt_summary(base_row[k]) for k, _ in COLUMNS)
                + " | " + " | ".join("–" for _ in judges) + " |"]
        for adapter in (a for a in sorted(grouped) if setting(a) == name):
            methods = grouped[adapter]
            for method in method_order(list(methods), cfg):
                runs = methods[method]
                seeds = sorted((s for s in runs.runs if s is not None))
                cells = [fmt_summary(summarize(runs.outcomes(k), k, cfg)) for k, _ in COLUMNS]
                met = ["–" if method == ALONE else _met(checks.get((adapter, method, h))) for _, h in judges]
                label = "the adapter alone" if method == ALONE else method
                out.append(f"| {adapter} | {label} | {', '.join(map(str, seeds)) or '–'} | " + " | ".join(cells)
                           + " | " + " | ".join(met) + " |")
        out.append("")
    return "\n".join(out)


def plot(outcomes: Mapping[str, dict[str, Outcomes]], base: str, path: str | Path, *,
         cfg: DecisionConfig = DecisionConfig(), thresholds: GateThresholds = GateThresholds(),
         harm_metric: str = "harmful_response_rate", title: str = "") -> Path:
    """One panel per adapter: ``harm_metric`` (y) against over-refusal (x), each method a point with its 95%
    interval, the target box (harm ≤ base + 5, over-refusal ≤ base + 3) shaded; a method below the task target is
    drawn hollow. Written atomically."""
    import matplotlib  # lazy: a second to import, only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the headless backend is chosen

    grouped = shown(outcomes, base, cfg)
    checks = {(c.adapter, c.method): c for c in targets(outcomes, base, thresholds, cfg) if c.harm_metric == harm_metric}
    adapters = sorted(grouped)
    cols = min(3, max(1, len(adapters)))
    rows = -(-len(adapters) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), dpi=100, squeeze=False)
    ref = {k: summarize({None: outcomes[base][k]}, k, cfg) if outcomes[base].get(k) else None
           for k in (harm_metric, "over_refusal_rate")}
    colours = plt.get_cmap("tab10")
    everyone = method_order(sorted({m for ms in grouped.values() for m in ms}), cfg)
    for ax, adapter in zip(axes.flat, adapters):
        if ref[harm_metric] and ref["over_refusal_rate"]:
            ax.add_patch(plt.Rectangle((0, 0), 100 * ref["over_refusal_rate"].mean + thresholds.max_over_refusal_increase,
                                       100 * ref[harm_metric].mean + thresholds.max_harm_increase,
                                       color="tab:green", alpha=0.12, lw=0))
            ax.plot(100 * ref["over_refusal_rate"].mean, 100 * ref[harm_metric].mean, "k*", ms=12, label=base,
                    zorder=5)
        for method in method_order(list(grouped[adapter]), cfg):
            runs = grouped[adapter][method]
            x = summarize(runs.outcomes("over_refusal_rate"), "over_refusal_rate", cfg)
            y = summarize(runs.outcomes(harm_metric), harm_metric, cfg)
            if x is None or y is None:
                continue
            c = checks.get((adapter, method))
            hollow = c is not None and c.met.get("task_accuracy") is False
            colour = colours(everyone.index(method) % 10)
            ax.errorbar(100 * x.mean, 100 * y.mean,
                        xerr=[[100 * (x.mean - x.ci95[0])], [100 * (x.ci95[1] - x.mean)]],
                        yerr=[[100 * (y.mean - y.ci95[0])], [100 * (y.ci95[1] - y.mean)]],
                        fmt="s" if method == cfg.safegene else "o", ms=7, capsize=2, color=colour,
                        mfc="white" if hollow else colour, label="adapter alone" if method == ALONE else method)
        ax.set_title(adapter, fontsize=10)
        ax.set_xlabel("over-refusal (%)")
        ax.set_ylabel(f"harmful rate, {'phrase' if harm_metric == 'harmful_response_rate' else 'response'} judge (%)")
        ax.set_xlim(left=-2)
        ax.set_ylim(bottom=-2)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(adapters):]:
        ax.axis("off")
    from matplotlib.lines import Line2D  # lazy: matplotlib only loads when a plot is drawn

    proxies = [Line2D([], [], color="k", marker="*", ls="", ms=10, label=base)] + [
        Line2D([], [], color=colours(everyone.index(m) % 10), marker="s" if m == cfg.safegene else "o", ls="", ms=7,
               label="adapter alone" if m == ALONE else m) for m in everyone]
    fig.legend(handles=proxies, loc="lower center", ncol=min(9, len(proxies)), fontsize=8, frameon=False)
    fig.suptitle(title or "Safety against over-refusal per adapter (green: the targets; hollow: task target missed)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save_figure(fig, path)


__all__ = ["COLUMNS", "setting_of", "method_order", "shown", "tables", "plot"]
