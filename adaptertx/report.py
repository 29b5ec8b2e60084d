"""Tables, intervals, plots and a verdict from a study's results store.

:func:`build_report` reads ``results.jsonl`` (:mod:`adaptertx.results`) and computes, per
target task and intermediate configuration: the primary score per language (mean over seeds,
± std when there are several) beside its **floors** (the English training label's majority
predictor and chance, :mod:`adaptertx.floors`); averages over all languages, over
**low-resource** languages (:func:`adaptertx.languages.is_low_resource`) and over the others;
the gain over the no-intermediate baseline; and **multi-task vs the best single task** on
low-resource languages.

**Nothing counted that did not learn.** A cell whose target adapter does not clearly beat its
majority floor on the English held-out split (:func:`adaptertx.floors.learned`) is shown,
marked ``†``, and left out of every average, gain and the verdict, with the reason.

**Intervals.** Each comparison is paired (same test examples, same seeds) and bootstrapped
hierarchically: seeds resampled, and within them test examples (one resample for both sides,
scores recomputed from the stored per-example counts), so an interval holds the variance of
the target training as well as that of the test sets. The verdict combines targets: per
round, each target's low-resource languages are resampled too, and the statistic is the mean
over targets of multi-task minus the best single task; its interval is family-wise 95%
(Bonferroni over the multi-task configurations compared). It says "beat" only when that
interval lies above zero with at least :data:`MIN_SEEDS` seeds, and "no clear difference"
otherwise. :func:`write_report` writes ``report.md``, ``report.json`` and PNG plots.

The best single task is chosen by its low-resource average on the same test data it is
compared on, which favours it: a multi-task gain shown here is conservative.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.io import atomic_write_bytes, atomic_write_text
from adaptertx.languages import normalize_or_none, pretraining_gib
from adaptertx.metrics import boot_indices, resampled_scores
from adaptertx.results import read_store
from adaptertx.rundir import MERGE_METHODS
from adaptertx.task_rankings import (
    TaskViews,
    agreement_sentence,
    build_views,
    compare_studies,
    ranking_table,
    render,
    render_comparison,
)
from adaptertx.tasks import get_task

MULTI = MERGE_METHODS
GROUPS = ("all", "low", "other")
#: Seeds of every target adapter a verdict needs before it may say that one side won.
MIN_SEEDS = 3
#: The family-wise level of the verdict's interval.
ALPHA = 0.05


@dataclass
class Comparison:
    """``a`` minus ``b`` on one target and language group, with a 95% bootstrap interval."""

    target: str
    group: str
    a: str
    b: str
    delta: float
    low: float | None
    high: float | None
    languages: int


@dataclass
class Report:
    """Everything :func:`write_report` prints (see the module doc)."""

    study: dict
    targets: list[str]
    configs: list[dict]
    baseline: str | None
    scores: dict  # target -> config -> lang -> [score per seed], cells that learned only
    low_resource: dict  # target -> lang -> bool
    primary: dict  # target -> score name
    averages: dict  # target -> config -> group -> (mean, std or None)
    gains: list[Comparison]
    multi_vs_single: list[Comparison]
    overall: list[dict]
    missing: dict  # target -> {lang: why}
    failed: list[dict]
    cells: list[dict]
    notes: list[str] = field(default_factory=list)
    floors: dict = field(default_factory=dict)  # target -> lang -> {"majority", "chance"}
    not_learned: list[dict] = field(default_factory=list)  # {"cell", "target", "config", "seed", "why", "scores"}
    combined: list[dict] = field(default_factory=list)  # the verdict's statistic per multi-task configuration
    intermediate: dict = field(default_factory=dict)  # task -> its adapter's English test vs its floor
    views: TaskViews | None = None  # which task for which language (:mod:`adaptertx.task_rankings`)


@dataclass
class _Cells:
    """The finished cells' scores by target, configuration and language, with what comparing them needs."""

    scores: dict
    low_res: dict
    primary: dict
    stats: dict
    seeds_of: dict
    rounds: int
    cache: dict = field(default_factory=dict)

    def group_langs(self, t: str, group: str, cfgs: list[str]) -> list[str]:
        """The languages of ``group`` (all, low, other) scored under every one of ``cfgs``."""
        langs = [lang for lang in self.low_res.get(t, {})
                 if all(lang in self.scores.get(t, {}).get(cfg, {}) for cfg in cfgs)]
        if group == "low":
            return [lang for lang in langs if self.low_res[t][lang]]
        if group == "other":
            return [lang for lang in langs if not self.low_res[t][lang]]
        return langs

    def reps(self, t: str, cfg: str, seed: int, lang: str) -> np.ndarray | None:
        """Bootstrap replicates of one cell-language's primary score (``None`` without counts)."""
        key = (t, cfg, seed, lang)
        if key not in self.cache:
            entry = self.stats.get(key)
            if entry is None:
                self.cache[key] = None
            else:
                rows, _ = entry
                idx = boot_indices(len(rows), f"{t}/{lang}", self.rounds)
                self.cache[key] = resampled_scores(get_task(t), rows, idx, self.primary[t])
        return self.cache[key]

    def seeds(self, t: str, a: str, b: str) -> list[int]:
        """The seeds both ``a`` and ``b`` have on ``t`` (paired by seed)."""
        return sorted(self.seeds_of.get((t, a), set()) & self.seeds_of.get((t, b), set()))

    def diffs(self, t: str, a: str, b: str, langs: list[str], seeds: list[int]) -> np.ndarray | None:
        """(rounds, seeds, languages): ``a`` minus ``b`` in each bootstrap resample of each
        seed-language's test examples (the same resample for both sides); ``None`` unless both
        have per-example counts of the same examples."""
        stats = self.stats
        keys = [(s, lang) for s in seeds for lang in langs]
        if not keys or not all(stats.get((t, x, s, lang)) is not None for x in (a, b) for s, lang in keys):
            return None
        if any(stats[(t, a, s, lang)][1] != stats[(t, b, s, lang)][1] for s, lang in keys):
            return None
        return np.stack([np.stack([self.reps(t, a, s, lang) - self.reps(t, b, s, lang) for lang in langs], axis=-1)
                         for s in seeds], axis=1)

    def compare(self, t: str, a: str, b: str, group: str, langs: list[str] | None = None) -> Comparison | None:
        """``a`` minus ``b`` on ``group``'s languages (or on ``langs``, ``group`` then naming
        them, e.g. one language), with a paired hierarchical bootstrap interval (seeds resampled,
        then test examples) when both have per-example counts of the same examples."""
        scores = self.scores
        if langs is None:
            langs = self.group_langs(t, group, [a, b])
        else:
            langs = [lang for lang in langs if all(lang in scores.get(t, {}).get(x, {}) for x in (a, b))]
        seeds = self.seeds(t, a, b)
        if not langs or not seeds:
            return None
        point = mean(mean(_at(scores[t][a][lang], seeds, self.seeds_of[(t, a)])) -
                     mean(_at(scores[t][b][lang], seeds, self.seeds_of[(t, b)])) for lang in langs)
        lo = hi = None
        d = self.diffs(t, a, b, langs, seeds)
        if d is not None:
            picks = boot_indices(len(seeds), f"seeds/{t}/{a}/{b}/{group}", self.rounds)
            boot = d[np.arange(self.rounds)[:, None], picks].mean(axis=(1, 2))
            lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        return Comparison(t, group, a, b, point, lo, hi, len(langs))


def _at(values: list[float], seeds: list[int], have: set[int]) -> list[float]:
    """The scores of ``seeds`` among ``values`` (one per seed of ``have``, in seed order)."""
    order = sorted(have)
    return [values[order.index(s)] for s in seeds]


def _collect(finished: list[dict], targets: list[str], rounds: int) -> tuple[_Cells, dict]:
    """The finished cells' scores (:class:`_Cells`) and, per target, the languages without a score and why."""
    scores, low_res, primary, missing, stats, seeds_of = {}, {}, {}, {}, {}, {}
    for c in sorted(finished, key=lambda c: c["seed"]):  # scores per language in seed order
        t, cfg = c["target"], c["config"]
        primary[t] = c["primary"]
        seeds_of.setdefault((t, cfg), set()).add(c["seed"])
        for lang, r in c["languages"].items():
            scores.setdefault(t, {}).setdefault(cfg, {}).setdefault(lang, []).append(r["scores"][c["primary"]])
            low_res.setdefault(t, {})[lang] = r["low_resource"]
            if r.get("stats") is not None:
                stats[(t, cfg, c["seed"], lang)] = (r["stats"], r.get("ids_sha"))
        for lang, why in c.get("missing", {}).items():
            missing.setdefault(t, {}).setdefault(lang, why)
    for t in targets:  # a language scored somewhere is not missing
        for lang in list(missing.get(t, {})):
            if lang in low_res.get(t, {}) and not missing[t][lang].startswith("not applicable"):
                missing[t].pop(lang)
    return _Cells(scores, low_res, primary, stats, seeds_of, rounds), missing


def _averages(cells: _Cells, targets: list[str]) -> dict:
    """Per target, configuration and group: (mean over seeds of the language average, its std or ``None``)."""
    averages = {}
    for t in targets:
        for cfg, per_lang in cells.scores.get(t, {}).items():
            for g in GROUPS:
                langs = cells.group_langs(t, g, [cfg])
                if not langs:
                    continue
                seeds = min(len(per_lang[lang]) for lang in langs)
                per_seed = [mean(per_lang[lang][s] for lang in langs) for s in range(seeds)]
                averages.setdefault(t, {}).setdefault(cfg, {})[g] = (mean(per_seed),
                                                                      stdev(per_seed) if len(per_seed) > 1 else None)
    return averages


def cell_learned(cell: dict) -> bool | None:
    """Whether a finished cell's target adapter clearly beat its floor (``None``: nothing trained,
    or not recorded)."""
    got = cell.get("learned")
    return got.get("learned") if isinstance(got, dict) else None


def _why_not(cell: dict) -> str:
    v = cell["learned"]
    return (f"English {v.get('split', 'test')} {v['metric']} {v['score']:.1f} vs majority floor {v['floor']:.1f}: "
            f"{v['difference']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}], not clearly above it")


def _floors(finished: list[dict]) -> dict:
    floors: dict = {}
    for c in finished:
        for lang, r in c["languages"].items():
            if r.get("floor"):
                floors.setdefault(c["target"], {}).setdefault(lang, r["floor"])
    return floors


def _intermediate(finished: list[dict]) -> dict:
    out: dict = {}
    for c in finished:
        out.update((c.get("intermediate") or {}).get("learned") or {})
    return out


def build_report(store: str | os.PathLike, *, rounds: int = 1000) -> Report:
    """Compute the report of the study whose store is ``store`` (its folder or file)."""
    header, cells = read_store(store)
    finished = [c for c in cells if c.get("status") == "finished"]
    failed = [c for c in cells if c.get("status") != "finished"]
    config_order = [c["name"] for c in header.get("config", {}).get("configs", [])]
    methods = {c["name"]: c["method"] for c in header.get("config", {}).get("configs", [])}
    for c in cells:
        if c["config"] not in config_order:
            config_order.append(c["config"])
            methods[c["config"]] = c.get("method", "?")
    targets = list(dict.fromkeys([*header.get("config", {}).get("targets", []), *(c["target"] for c in cells)]))
    baseline = next((n for n in config_order if methods.get(n) == "none"), None)
    shown, missing = _collect(finished, targets, rounds)
    table, _ = _collect([c for c in finished if cell_learned(c) is not False], targets, rounds)
    not_learned = [{"cell": c["cell"], "target": c["target"], "config": c["config"], "seed": c["seed"],
                    "why": _why_not(c),
                    "scores": {lang: r["scores"][c["primary"]] for lang, r in c["languages"].items()}}
                   for c in finished if cell_learned(c) is False]
    averages = _averages(table, targets)

    gains = []
    if baseline is not None:
        for t in targets:
            for cfg in config_order:
                if cfg == baseline or cfg not in table.scores.get(t, {}):
                    continue
                gains += [c for g in GROUPS if (c := table.compare(t, cfg, baseline, g)) is not None]

    singles = [n for n in config_order if methods.get(n) == "single"]
    multis = [n for n in config_order if methods.get(n) in MULTI]
    multi_vs_single = []
    for t in targets:
        ranked = [(averages.get(t, {}).get(n, {}).get("low", (None,))[0], n) for n in singles]
        ranked = [(v, n) for v, n in ranked if v is not None]
        if not ranked:
            continue
        best_single = max(ranked)[1]
        multi_vs_single += [c for m in multis if (c := table.compare(t, m, best_single, "low")) is not None]
    overall = _overall(multi_vs_single, multis, methods)
    combined = _combined(table, multi_vs_single, multis, methods, targets, rounds)
    tasks = {c["name"]: c.get("tasks", []) for c in header.get("config", {}).get("configs", [])}
    views = build_views([c for c in finished if cell_learned(c) is not False], table,
                        [{"name": n, "method": methods.get(n), "tasks": tasks.get(n, [])} for n in config_order],
                        baseline, targets, lambda t, langs: sorted(langs, key=lambda lang: (_gib(lang), lang)), rounds)
    return Report(header, targets, [{"name": n, "method": methods.get(n)} for n in config_order], baseline,
                  table.scores, shown.low_res, shown.primary, averages, gains, multi_vs_single, overall, missing,
                  failed, cells, [], _floors(finished), not_learned, combined, _intermediate(finished), views)


def _overall(multi_vs_single: list[Comparison], multis: list[str], methods: dict) -> list[dict]:
    overall = []
    for m in multis:
        rows = [c for c in multi_vs_single if c.a == m]
        if rows:
            lows = [c.low for c in rows]
            overall.append({"config": m, "method": methods[m], "targets": len(rows),
                            "delta": mean(c.delta for c in rows),
                            "per_target": {c.target: (c.b, c.delta, c.low, c.high) for c in rows},
                            "all_intervals": None not in lows})
    return overall


def _combined(table: _Cells, multi_vs_single: list[Comparison], multis: list[str], methods: dict,
              targets: list[str], rounds: int) -> list[dict]:
    """Per multi-task configuration: the mean over targets of (it minus the best single task) on
    low-resource languages, with a family-wise interval from a hierarchical bootstrap over
    languages × seeds × test examples (see the module doc)."""
    tested = [m for m in multis if any(c.a == m for c in multi_vs_single)]
    level = ALPHA / max(1, len(tested))  # Bonferroni over the configurations compared
    out = []
    for m in tested:
        rows = [c for c in multi_vs_single if c.a == m]
        boots, used, seeds = [], [], []
        for c in rows:
            langs, common = table.group_langs(c.target, "low", [c.a, c.b]), table.seeds(c.target, c.a, c.b)
            d = table.diffs(c.target, c.a, c.b, langs, common)
            if d is None:
                continue
            key = f"{c.target}/{c.a}/{c.b}"
            s_pick = boot_indices(len(common), f"seeds/{key}", rounds)[:, :, None]
            l_pick = boot_indices(len(langs), f"langs/{key}", rounds)[:, None, :]
            boots.append(d[np.arange(rounds)[:, None, None], s_pick, l_pick].mean(axis=(1, 2)))
            used.append(c)
            seeds.append(len(common))
        entry = {"config": m, "method": methods[m], "comparisons": len(tested), "level": 1 - level,
                 "targets": [c.target for c in used], "best_single": {c.target: c.b for c in used},
                 "without_interval": [c.target for c in rows if c not in used],
                 "not_compared": [t for t in targets if t not in {c.target for c in rows}],
                 "seeds": min(seeds) if seeds else 0, "seeds_per_target": dict(zip(
                     [c.target for c in used], seeds, strict=True)), "delta": None, "low": None, "high": None}
        if used:
            both = np.mean(boots, axis=0)
            lo, hi = np.percentile(both, [100 * level / 2, 100 * (1 - level / 2)])
            entry.update(delta=float(mean(c.delta for c in used)), low=float(lo), high=float(hi))
        out.append(entry)
    return out


# ------------------------------------------------------------------------------ writing


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.1f}" if sign else f"{v:.1f}"


def _ci(c: Comparison | None) -> str:
    if c is None:
        return "–"
    if c.low is None:
        return _fmt(c.delta, True)
    return f"{c.delta:+.1f} [{c.low:+.1f}, {c.high:+.1f}]"


def _gib(lang: str) -> float:
    """CC-100 size for ordering a table (a code adaptertx does not know, placed by the user when
    it was scored, sorts with the languages XLM-R never saw)."""
    return pretraining_gib(lang) if normalize_or_none(lang) is not None else 0.0


def _lang_order(report: Report, t: str) -> list[str]:
    return sorted(report.low_resource.get(t, {}), key=lambda lang: (_gib(lang), lang))


def target_table(report: Report, t: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one target's table: configurations × languages (low-resource first,
    marked ``*``), averages, the gains over the baseline with their 95% intervals, and the floors
    (majority predictor, chance) beneath. A cell whose target adapter did not learn has a row of
    its own beneath its configuration's, marked ``†``: its scores are shown, and left out of the
    configuration's per-language means, averages and gains."""
    langs = _lang_order(report, t)
    head = ["config", "method"] + [f"{lang}*" if report.low_resource[t][lang] else lang for lang in langs] + \
           ["avg", "low* avg", "other avg"]
    if report.baseline:
        head += [f"Δ low* vs {report.baseline} [95% CI]", f"Δ all vs {report.baseline}"]
    rows = []
    gains = {(c.a, c.group): c for c in report.gains if c.target == t}
    for cfg in [c["name"] for c in report.configs]:
        method = next(c["method"] for c in report.configs if c["name"] == cfg)
        per = report.scores.get(t, {}).get(cfg)
        if per is not None:
            cells = []
            for lang in langs:
                vals = per.get(lang)
                cells.append("–" if not vals else _fmt(mean(vals)) + (f"±{stdev(vals):.1f}" if len(vals) > 1 else ""))
            avg = report.averages.get(t, {}).get(cfg, {})
            row = [cfg, method, *cells,
                   *(_fmt(avg.get(g, (None,))[0]) + (f"±{avg[g][1]:.1f}" if g in avg and avg[g][1] is not None else "")
                     for g in GROUPS)]
            if report.baseline:
                row += ["" if cfg == report.baseline else _ci(gains.get((cfg, "low"))),
                        "" if cfg == report.baseline else _ci(gains.get((cfg, "all")))]
            rows.append(row)
        for c in report.not_learned:
            if c["target"] == t and c["config"] == cfg:
                row = [f"{cfg} † seed {c['seed']} (did not learn)", method,
                       *(_fmt(c["scores"].get(lang)) for lang in langs)]
                rows.append(row + [""] * (len(head) - len(row)))
    return head, rows + _floor_rows(report, t, langs, len(head))


def _floor_rows(report: Report, t: str, langs: list[str], width: int) -> list[list[str]]:
    """The majority-predictor and chance rows of one target's table."""
    floors = report.floors.get(t, {})
    rows = []
    for kind, label in (("majority", "floor: majority"), ("chance", "floor: chance")):
        vals = {lang: floors.get(lang, {}).get(kind) for lang in langs}
        if all(v is None for v in vals.values()):
            continue
        groups = []
        for g in GROUPS:
            members = [v for lang, v in vals.items() if v is not None and
                       (g == "all" or report.low_resource[t][lang] == (g == "low"))]
            groups.append(_fmt(mean(members)) if members else "–")
        row = [label, "", *(_fmt(vals[lang]) for lang in langs), *groups]
        rows.append(row + [""] * (width - len(row)))
    return rows


def _left_out(report: Report, used: set[str]) -> str:
    """Why the targets outside the verdict are outside it."""
    why = []
    for t in report.targets:
        if t in used:
            continue
        dnl = sum(1 for c in report.not_learned if c["target"] == t)
        if dnl:
            why.append(f"{t} ({dnl} cell(s) whose target adapter did not learn)")
        elif not any(report.low_resource.get(t, {}).values()):
            why.append(f"{t} (no low-resource language)")
        elif any(c.target == t for c in report.multi_vs_single):
            why.append(f"{t} (no per-example counts to resample)")
        else:
            why.append(f"{t} (no single-task and multi-task cells to compare)")
    return f" Left out of the verdict: {'; '.join(why)}." if why else ""


def verdict(report: Report) -> str:
    """Did multi-task beat the best single task on low-resource languages, over the targets that
    learned, with the combined interval of the module doc?"""
    combined = [c for c in report.combined if c["delta"] is not None]
    if not combined:
        return ("No verdict: the study needs at least one single-task and one multi-task configuration whose "
                "target adapters learned, with per-example low-resource results on the same target."
                + _left_out(report, set()))
    fewest = min(c["seeds"] for c in combined)
    most = max(n for c in combined for n in c["seeds_per_target"].values())
    seeds = str(most) if fewest == most else f"{fewest}–{most}"
    above = [c for c in combined if c["low"] > 0]
    below = [c for c in combined if c["high"] < 0]
    best = max(combined, key=lambda c: c["delta"])
    if most < MIN_SEEDS or fewest < 2:
        head = (f"**No verdict at {seeds} seed(s).** A verdict needs at least {MIN_SEEDS} seeds of the target "
                f"adapters (and two on every target, once the cells that did not learn are left out), so that its "
                f"interval holds the variance of training and not only of the test sets.")
    elif above and not below:
        head = "**Multi-task beat the best single task on low-resource languages.**"
    elif below and not above:
        head = "**The best single task beat multi-task on low-resource languages.**"
    elif not above:
        head = ("**No clear difference at this budget** between multi-task and the best single task on "
                "low-resource languages: every combined interval includes zero.")
    else:
        head = "**Mixed:** some multi-task configurations lie above the best single task and some below."
    level = combined[0]["level"]
    lines = []
    for c in combined:
        per = "; ".join(f"{t}: vs {c['best_single'][t]}" for t in c["targets"])
        lines.append(f"- **{c['config']}** ({c['method']}): {c['delta']:+.1f} points [{c['low']:+.1f}, "
                     f"{c['high']:+.1f}] over {len(c['targets'])} target(s) ({per}).")
    method = (f"Strongest: `{best['config']}` ({best['method']}), {best['delta']:+.1f} points "
              f"[{best['low']:+.1f}, {best['high']:+.1f}]. Each statistic is the mean over targets of the "
              f"configuration minus that target's best single task on its low-resource languages; intervals are "
              f"{100 * level:.1f}% each (95% family-wise, Bonferroni over {combined[0]['comparisons']} multi-task "
              f"configuration(s)), from a hierarchical bootstrap over languages × {seeds} seed(s) × test examples. "
              f"The intermediate adapters are trained once per study, so their own training variance is not in "
              f"the intervals.")
    singles = [c["name"] for c in report.configs if c["method"] == "single"]
    if len(singles) == 1:
        method += f" The study has one single-task configuration, `{singles[0]}`: it is the best single task."
    used = {t for c in combined for t in c["targets"]}
    return head + " " + method + _left_out(report, used) + "\n\n" + "\n".join(lines)


def _pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    matplotlib = import_optional("matplotlib", "plots", "drawing the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, tight: bool = True) -> bytes:
    """``fig`` as PNG bytes (the figure is closed)."""
    plt = _pyplot()
    if tight:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plot_target(report: Report, t: str) -> bytes | None:
    plt = _pyplot()

    if report.baseline is None or report.baseline not in report.scores.get(t, {}):
        return None
    langs = _lang_order(report, t)
    base = report.scores[t][report.baseline]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(langs) + 2), 4.2))
    xs = np.arange(len(langs))
    n_low = sum(1 for lang in langs if report.low_resource[t][lang])
    if n_low:
        ax.axvspan(-0.5, n_low - 0.5, color="#f3e3c3", zorder=0, label="low-resource (<5 GiB CC-100)")
    markers = "osD^v<>ph*"
    for i, cfg in enumerate(c["name"] for c in report.configs):
        if cfg == report.baseline or cfg not in report.scores[t]:
            continue
        method = next(c["method"] for c in report.configs if c["name"] == cfg)
        ys = [mean(report.scores[t][cfg][lang]) - mean(base[lang]) if lang in report.scores[t][cfg] and lang in base
              else np.nan for lang in langs]
        ax.plot(xs, ys, marker=markers[i % len(markers)], linestyle="-" if method in MULTI else ":",
                linewidth=1.6 if method in MULTI else 1.0, label=f"{cfg} ({method})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(xs, langs, rotation=0)
    ax.set_xlabel("language, ordered by XLM-R pretraining data (CC-100 GiB, ascending)")
    ax.set_ylabel(f"{report.primary.get(t, 'score')} gain over '{report.baseline}' (points)")
    ax.set_title(f"{t}: zero-shot gain per language")
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _plot_summary(report: Report) -> bytes | None:
    plt = _pyplot()

    gains = [c for c in report.gains if c.group == "low"]
    if not gains:
        return None
    cfgs = [c["name"] for c in report.configs if c["name"] != report.baseline]
    targets = [t for t in report.targets if any(g.target == t for g in gains)]
    width = 0.8 / max(1, len(cfgs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(targets) + 2), 4.2))
    for i, cfg in enumerate(cfgs):
        vals, errs = [], [[], []]
        for t in targets:
            g = next((x for x in gains if x.target == t and x.a == cfg), None)
            vals.append(g.delta if g else np.nan)
            errs[0].append(g.delta - g.low if g and g.low is not None else 0)
            errs[1].append(g.high - g.delta if g and g.high is not None else 0)
        ax.bar(np.arange(len(targets)) + i * width - 0.4 + width / 2, vals, width, yerr=errs, capsize=2, label=cfg)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(targets)), targets)
    ax.set_ylabel(f"low-resource average gain over '{report.baseline}' (points, 95% CI)")
    ax.set_title("Gain on low-resource languages by intermediate configuration")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _plot_attention(view) -> bytes:
    """A Fusion's attention (:class:`adaptertx.task_rankings.AttentionView`) as a heatmap:
    languages (least pretraining data first) × task adapters, for the layer mean and each top layer."""
    plt = _pyplot()
    panels = [("mean over layers", [view.layer_mean(lang) for lang in view.languages])]
    panels += [(f"layer {view.layers[i]}", [view.mean[lang][i] for lang in view.languages]) for i in view.top()]
    width = 1.2 + 0.9 * len(view.adapters)
    height = 0.42 * len(view.languages) + 2.0
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels) + 1.6, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.7 / height, bottom=0.8 / height, left=0.06, right=0.9)
    labels = [f"{lang}*" if view.low_resource[lang] else lang for lang in view.languages]
    image = None
    for i, (ax, (title, values)) in enumerate(zip(axes[0], panels, strict=True)):
        grid = np.array(values)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (row, col), v in np.ndenumerate(grid):
            ax.text(col, row, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 else "black")
        ax.set_xticks(range(len(view.adapters)), view.adapters, rotation=30, fontsize=8)
        ax.set_yticks(range(len(labels)), labels if i == 0 else [""] * len(labels), fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, label="attention weight")
    fig.suptitle(f"{view.target}: attention of {view.config} over its task adapters (mean over real tokens and "
                 f"{len(view.seeds)} seed(s); languages by CC-100 size, * low-resource)", fontsize=9)
    return _png(fig, tight=False)


def _trace_rows(report: Report) -> list[list[str]]:
    rows = []
    for c in report.cells:
        tr = c.get("trace", {})
        ver = tr.get("versions", {})
        splits = sorted({f"{r['split']}:{r['source']}" for r in c.get("languages", {}).values()})
        ckpts = ", ".join(
            f"{k['role']}:"
            f"{Path(k['path']).parent.parent.name if k['role'] == 'target' else Path(k['path']).parent.name}"
            f"@{k['sha256'][:10]}" for k in tr.get("checkpoints", []))
        rows.append([c["cell"], c.get("status", "?"), tr.get("fingerprint") or "–", str(c.get("seed")),
                     "; ".join(splits) or "–", ckpts or "–",
                     " ".join(f"{k}={ver[k]}" for k in ("adaptertx", "torch", "transformers", "adapters") if k in ver)])
    return rows


def _learning_sections(report: Report) -> list[str]:
    """The cells that did not learn, and the intermediate adapters beside their floors."""
    from tabulate import tabulate

    out = []
    if report.not_learned:
        out += ["## Cells that did not learn", "", "Shown in the tables (`†`), left out of every average, gain and "
                "the verdict.", "", tabulate([[c["cell"], c["why"]] for c in report.not_learned], ["cell", "why"],
                                            tablefmt="github"), ""]
    if report.intermediate:
        rows = []
        for task, v in report.intermediate.items():
            if not v:
                rows.append([task, "–", "–", "–", "not recorded"])
                continue
            ok = v["low"] > 0
            rows.append([task, _fmt(v.get("score")), _fmt(v.get("floor")),
                         f"{v['difference']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}]", "yes" if ok else "**no**"])
        out += ["## Intermediate adapters", "", "Each task adapter's English test score beside its majority floor "
                "(paired 95% bootstrap interval). A configuration built on an adapter that did not learn tests "
                "little more than its initialisation.", "",
                tabulate(rows, ["task", "English test", "majority floor", "Δ [95% CI]", "learned"],
                         tablefmt="github", disable_numparse=True), ""]
    return out


def render_markdown(report: Report, plots: dict[str, str]) -> str:
    """The report as Markdown (``plots``: target → PNG file name beside it)."""
    from tabulate import tabulate

    study = report.study
    cfg = study.get("config", {})
    out = [f"# {study.get('study', 'study')}: single-task vs multi-task intermediate training", ""]
    if cfg.get("description"):
        out += [cfg["description"], ""]
    out += [f"Base `{cfg.get('model')}` ({cfg.get('quant')}), adapter `{cfg.get('adapter')}`, seeds "
            f"{', '.join(str(s) for s in cfg.get('seeds', []))}; {len(report.cells)} cells "
            f"({len(report.failed)} failed). Low-resource (`*`): under 5 GiB of CC-100 text (XLM-R's "
            f"pretraining data). Scores in percent; Δ = configuration minus `{report.baseline}` with a 95% paired "
            f"hierarchical bootstrap interval over seeds and test examples. Each target's floors (its English "
            f"training label's majority predictor, and chance) are the last rows of its table; `†` marks cells "
            f"whose target adapter did not clearly beat its floor on English: shown, but left out of averages, "
            f"gains and the verdict.", "", "## Verdict", "", verdict(report), ""]
    if report.multi_vs_single:
        rows = [[c.target, c.a, c.b, _ci(c), c.languages] for c in report.multi_vs_single]
        out += ["### Multi-task minus the best single task (low-resource average)", "",
                tabulate(rows, ["target", "multi-task", "best single", "Δ [95% CI]", "languages"], tablefmt="github"),
                "", "The best single task is picked on the same test data, which favours it.", ""]
    if "summary" in plots:
        out += [f"![gains on low-resource languages]({plots['summary']})", ""]
    for t in report.targets:
        out += [f"## {t} ({report.primary.get(t, '?')})", ""]
        if t in report.scores or any(c["target"] == t for c in report.not_learned):
            head, rows = target_table(report, t)
            out += [tabulate(rows, head, tablefmt="github", disable_numparse=True), ""]
        if t in plots:
            out += [f"![{t} gains per language]({plots[t]})", ""]
        gone = report.missing.get(t, {})
        if gone:
            out += ["Not scored: " + "; ".join(f"{lang} ({why})" for lang, why in sorted(gone.items())), ""]
    if report.views is not None:
        out += render(report.views, report.baseline, plots)
    out += _learning_sections(report)
    if report.failed:
        out += ["## Failed cells", "", tabulate([[c["cell"], c.get("error", "?")] for c in report.failed],
                                                  ["cell", "error"], tablefmt="github"), ""]
    out += ["## Trace", "", "Each number above comes from one of these cells (`results.jsonl` holds the full record: "
            "adapter checkpoints with SHA-256, data split and source per language, per-example counts).", "",
            tabulate(_trace_rows(report), ["cell", "status", "base fingerprint", "seed", "data", "checkpoints",
                                           "versions"], tablefmt="github"), ""]
    return "\n".join(out)


def write_report(store: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 rounds: int = 1000) -> tuple[Path, Report]:
    """Write ``report.md``, ``report.json`` and the plots into ``out`` (default: ``report/``
    beside the store); returns the Markdown file and the report."""
    store = Path(store)
    folder = Path(out) if out is not None else (store if store.is_dir() else store.parent) / "report"
    report = build_report(store, rounds=rounds)
    if not report.cells:
        raise AdaptertxError(f"{store}: the results store holds no cells yet")
    folder.mkdir(parents=True, exist_ok=True)
    plots = {}
    for t in report.targets:
        png = _plot_target(report, t)
        if png is not None:
            atomic_write_bytes(folder / f"gains_{t}.png", png)
            plots[t] = f"gains_{t}.png"
    png = _plot_summary(report)
    if png is not None:
        atomic_write_bytes(folder / "gains_low_resource.png", png)
        plots["summary"] = "gains_low_resource.png"
    for view in report.views.attention if report.views else []:
        name = f"attention_{view.target}_{view.config}.png"
        atomic_write_bytes(folder / name, _plot_attention(view))
        plots[f"{view.target}/{view.config}"] = name
    md = render_markdown(report, plots)
    atomic_write_text(folder / "report.md", md)
    body = {"study": report.study.get("study"), "study_hash": report.study.get("study_hash"),
            "baseline": report.baseline, "scores": report.scores, "averages": report.averages,
            "gains": [c.__dict__ for c in report.gains],
            "multi_vs_single": [c.__dict__ for c in report.multi_vs_single],
            "overall": report.overall, "combined": report.combined, "floors": report.floors,
            "not_learned": report.not_learned, "intermediate": report.intermediate,
            "verdict": verdict(report), "missing": report.missing,
            "task_views": report.views.to_json() if report.views else None,
            "failed": [{"cell": c["cell"], "error": c.get("error")} for c in report.failed]}
    atomic_write_text(folder / "report.json", json.dumps(body, indent=2) + "\n")
    return folder / "report.md", report


def task_lines(report: Report) -> list[str]:
    """For a terminal: each target's per-language ranking of the single tasks and its agreement
    with the Fusion's attention (or why they are absent)."""
    from tabulate import tabulate

    views = report.views
    if views is None:
        return []
    out = []
    for t, rows in views.rankings.items():
        head, body = ranking_table(rows, views.tasks, report.baseline, [v for v in views.attention if v.target == t])
        out += [f"\n{t}: best single intermediate task per language", tabulate(body, head, tablefmt="simple",
                                                                              disable_numparse=True)]
    out += [f"\n{agreement_sentence(a)}" for a in views.agreement]
    out += [f"\n{why}" for t, whys in views.absent.items() for why in whys]
    return out


def write_comparison(a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike | None = None, *,
                     rounds: int = 1000):
    """Compare two studies' per-language rankings of their single tasks
    (:func:`adaptertx.task_rankings.compare_studies`); writes ``versus-<B's name>.md`` and
    ``.json`` into ``out`` (default: A's ``report/``). Returns the Markdown file and the comparison."""
    from dataclasses import asdict

    first, second = build_report(a, rounds=rounds), build_report(b, rounds=rounds)
    for store, report in ((a, first), (b, second)):
        if not report.cells:
            raise AdaptertxError(f"{store}: the results store holds no cells yet")
    comparison = compare_studies(first, second, rounds=rounds)
    a = Path(a)
    folder = Path(out) if out is not None else (a if a.is_dir() else a.parent) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"versus-{comparison.b}"
    atomic_write_text(folder / f"{stem}.md", render_comparison(comparison))
    atomic_write_text(folder / f"{stem}.json", json.dumps(asdict(comparison), indent=2) + "\n")
    return folder / f"{stem}.md", comparison
