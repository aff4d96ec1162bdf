"""The results page's tables and plot (safegene_runtime/results_page.py): one table per setting with every shown
method's four numbers and its targets under each judge, SafeGene's seeds averaged; the plot; `safegene decide
--tables/--plot`."""

from __future__ import annotations

import pytest

from safegene_runtime.cli import main
from safegene_runtime.decision import DecisionConfig
from safegene_runtime.results_page import plot, setting_of, shown, tables
from tests.test_decision import HR, OR, ACC, _judged_rows, _write, events, model, span

RJ = "response_harmful_rate"
CFG = DecisionConfig(resamples=200, seeds=(0, 1))


def _family() -> dict:
    """A (10% harm, 10% over-refusal), two adapters of two settings, SafeGene with two seeds, one baseline, a
    SafeGene variant (never shown) and a model the rule does not read as a method of an adapter with SafeGene."""
    base = {HR: events(*span(0, 10), set_name="harm"), RJ: events(*span(0, 5), set_name="harm"),
            OR: events(*span(0, 10), set_name="benign")}
    per = {"A": base,
           "x-clean": model(span(0, 40), span(0, 0), span(0, 80)),
           "x-clean+safegene-seed0": model(span(0, 12), span(0, 12), span(0, 80)),
           "x-clean+safegene-seed1": model(span(0, 16), span(0, 14), span(0, 79)),
           "x-clean+uniform": model(span(0, 2), span(0, 30), span(0, 80)),
           "x-clean+safegene-ablation": model(span(0, 0), span(0, 0), span(0, 80)),
           "y-mix10": model(span(0, 90), span(0, 0), span(0, 70)),
           "y-mix10+safegene-seed0": model(span(0, 50), span(0, 10), span(0, 70)),
           "y-mix10+safegene-seed1": model(span(0, 50), span(0, 10), span(0, 70)),
           "orphan": model(span(0, 1), span(0, 1), span(0, 1))}
    for name in per:  # the response judge sees a tenth of the phrase judge's harm on every model
        if name != "A":
            per[name][RJ] = events(*span(0, sum(per[name][HR].values()) // 10), set_name="harm")
    return per


def test_tables_show_every_method_per_setting_with_seeds_averaged_and_targets_under_each_judge():
    md = tables(_family(), "A", cfg=CFG)
    assert setting_of("sentiment-clean") == "clean" and setting_of("topic-mix10") == "mix10"
    assert md.index("#### Setting: clean") < md.index("#### Setting: mix10")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in md.splitlines()
            if line.startswith("| x-") or line.startswith("| y-")}
    assert set(rows) == {("x-clean", "the adapter alone"), ("x-clean", "safegene"), ("x-clean", "uniform"),
                         ("y-mix10", "the adapter alone"), ("y-mix10", "safegene")}  # no variant, no orphan
    sg = rows[("x-clean", "safegene")]
    # HR seeds 12% and 16%: mean 14 (≤ 10 + 5), range shown; over-refusal 13 ≤ 13; task 79.5 ≥ 79: met, both judges
    assert "| 0, 1 | 14.0% [" in sg and "seeds 12.0–16.0 (n=100)" in sg and sg.endswith("| **yes** | **yes** |")
    assert rows[("x-clean", "uniform")].endswith("| no | no |")  # 30% over-refusal
    assert rows[("y-mix10", "safegene")].endswith("| no | **yes** |")  # 50% by phrase, 5% by the response judge
    assert rows[("x-clean", "the adapter alone")].endswith("| – | – |")
    assert "| – | A (aligned base) | – | 10.0% [" in md
    with pytest.raises(ValueError, match="base model 'B'"):
        tables(_family(), "B", cfg=CFG)
    only = shown(_family(), "A", DecisionConfig(resamples=200, seeds=(0, 1), baselines=()))
    assert set(only["x-clean"]) == {"alone", "safegene"}


def test_decide_writes_the_tables_and_a_plot_per_judge(tmp_path, capsys):
    rows = [r for name, m in _family().items() for r in _judged_rows(name, m)]
    for r in rows:  # the response judge's verdict beside the phrase judge's, as `safegene eval` writes it
        r["response_judge"] = "no_harmful_help"
    harmful = {(name, i) for name, m in _family().items() for (_, i), e in m.get(RJ, {}).items() if e}
    for r in rows:
        if r["role"] == "harmful" and (r["model"], r["id"]) in harmful:
            r["response_judge"] = "harmful_help"
    _write(tmp_path / "e", rows)
    tab, png = tmp_path / "tables.md", tmp_path / "su.png"
    args = ["decide", str(tmp_path / "e"), "--seeds", "0,1", "--resamples", "200"]
    assert main([*args, "--tables", str(tab)]) == 1  # the targets need the base
    assert "--tables and --plot need --base" in capsys.readouterr().err
    assert main([*args, "--base", "A", "--tables", str(tab), "--plot", str(png)]) == 0
    assert tab.read_text() == tables(_loaded(tmp_path / "e"), "A", cfg=CFG)
    for p in (png, tmp_path / "su-response.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp.png"))


def _loaded(folder):
    from safegene_runtime.decision import load_outcomes

    return load_outcomes([folder])


def test_the_plot_draws_one_panel_per_adapter(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real = plt.subplots

    def spy(*a, **k):
        fig, axes = real(*a, **k)
        seen["axes"] = axes
        return fig, axes

    plt.subplots = spy
    try:
        plot(_family(), "A", tmp_path / "p.png", cfg=CFG)
    finally:
        plt.subplots = real
    titles = [ax.get_title() for ax in seen["axes"].flat]
    assert titles == ["x-clean", "y-mix10"]
    ax = seen["axes"].flat[0]
    (box,) = ax.patches  # the target box: over-refusal ≤ 10 + 3, harm ≤ 10 + 5 (percent)
    assert (box.get_width(), box.get_height()) == pytest.approx((13.0, 15.0))
    assert (tmp_path / "p.png").is_file()
