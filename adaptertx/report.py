"""Tables, intervals, plots and a short verdict from a study's results store.

:func:`build_report` reads ``results.jsonl`` (:mod:`adaptertx.results`) and computes, per
target task and intermediate configuration: the primary score per language (mean over seeds,
± std when there are several), averages over all languages, over **low-resource** languages
(:func:`adaptertx.languages.is_low_resource`) and over the others; the gain over the
no-intermediate baseline with a 95% **paired bootstrap** interval (test examples resampled
per language, the same resample for both sides, scores recomputed from the stored counts);
and **multi-task vs the best single task** on low-resource languages. :func:`write_report`
writes ``report.md`` (tables, the verdict, a cell-by-cell trace), ``report.json`` and PNG
plots of per-language gains ordered by pretraining-data size.

The best single task is chosen by its low-resource average on the same test data it is
compared on, which favours it: a multi-task gain shown here is conservative.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from adaptertx.errors import AdaptertxError, import_optional
from adaptertx.io import atomic_write_bytes, atomic_write_text
from adaptertx.languages import pretraining_gib
from adaptertx.metrics import stats_score
from adaptertx.results import read_store
from adaptertx.rundir import MERGE_METHODS
from adaptertx.tasks import get_task

MULTI = MERGE_METHODS
GROUPS = ("all", "low", "other")


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
    scores: dict  # target -> config -> lang -> [score per seed]
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


def _boot_indices(n: int, key: str, rounds: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") ^ n  # the whole key counts
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def _replicates(task, stats: list, idx: np.ndarray, primary: str) -> np.ndarray:
    """(rounds,) the primary score of each bootstrap resample of ``stats`` (rows of counts)."""
    arr = np.asarray(stats, dtype=np.float64)
    sums = arr[idx].sum(axis=1)  # (rounds, columns)
    n = idx.shape[1]
    return np.array([stats_score(task, [*row, n])[primary] for row in sums])


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
                self.cache[key] = _replicates(get_task(t), rows, _boot_indices(len(rows), f"{t}/{lang}", self.rounds),
                                              self.primary[t])
        return self.cache[key]

    def compare(self, t: str, a: str, b: str, group: str) -> Comparison | None:
        """``a`` minus ``b`` on ``group``'s languages, with a paired bootstrap interval when both
        have per-example counts of the same examples."""
        scores, stats = self.scores, self.stats
        langs = self.group_langs(t, group, [a, b])
        seeds = sorted(self.seeds_of.get((t, a), set()) & self.seeds_of.get((t, b), set()))
        if not langs or not seeds:
            return None
        point = mean(mean(scores[t][a][lang]) - mean(scores[t][b][lang]) for lang in langs)
        lo = hi = None
        usable = all(stats.get((t, x, s, lang)) is not None for x in (a, b) for s in seeds for lang in langs) and all(
            stats[(t, a, s, lang)][1] == stats[(t, b, s, lang)][1] for s in seeds for lang in langs)
        if usable:
            diffs = np.mean([np.mean([self.reps(t, a, s, lang) - self.reps(t, b, s, lang) for s in seeds], axis=0)
                             for lang in langs], axis=0)
            lo, hi = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
        return Comparison(t, group, a, b, point, lo, hi, len(langs))


def _collect(finished: list[dict], targets: list[str], rounds: int) -> tuple[_Cells, dict]:
    """The finished cells' scores (:class:`_Cells`) and, per target, the languages without a score and why."""
    scores, low_res, primary, missing, stats, seeds_of = {}, {}, {}, {}, {}, {}
    for c in finished:
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
    table, missing = _collect(finished, targets, rounds)
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
    multi_vs_single, notes = [], []
    for t in targets:
        ranked = [(averages.get(t, {}).get(n, {}).get("low", (None,))[0], n) for n in singles]
        ranked = [(v, n) for v, n in ranked if v is not None]
        if not ranked:
            continue
        best_single = max(ranked)[1]
        multi_vs_single += [c for m in multis if (c := table.compare(t, m, best_single, "low")) is not None]
    overall = []
    for m in multis:
        rows = [c for c in multi_vs_single if c.a == m]
        if rows:
            lows = [c.low for c in rows]
            overall.append({"config": m, "method": methods[m], "targets": len(rows),
                            "delta": mean(c.delta for c in rows),
                            "per_target": {c.target: (c.b, c.delta, c.low, c.high) for c in rows},
                            "all_intervals": None not in lows})
    return Report(header, targets, [{"name": n, "method": methods.get(n)} for n in config_order], baseline,
                  table.scores, table.low_res, table.primary, averages, gains, multi_vs_single, overall, missing,
                  failed, cells, notes)


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


def _lang_order(report: Report, t: str) -> list[str]:
    return sorted(report.low_resource.get(t, {}), key=lambda lang: (pretraining_gib(lang), lang))


def target_table(report: Report, t: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one target's table: configurations × languages (low-resource first,
    marked ``*``), averages, and the gains over the baseline with their 95% intervals."""
    langs = _lang_order(report, t)
    head = ["config", "method"] + [f"{lang}*" if report.low_resource[t][lang] else lang for lang in langs] + \
           ["avg", "low* avg", "other avg"]
    if report.baseline:
        head += [f"Δ low* vs {report.baseline} [95% CI]", f"Δ all vs {report.baseline}"]
    rows = []
    gains = {(c.a, c.group): c for c in report.gains if c.target == t}
    for cfg in [c["name"] for c in report.configs]:
        per = report.scores.get(t, {}).get(cfg)
        if per is None:
            continue
        cells = []
        for lang in langs:
            vals = per.get(lang)
            cells.append("–" if not vals else _fmt(mean(vals)) + (f"±{stdev(vals):.1f}" if len(vals) > 1 else ""))
        avg = report.averages.get(t, {}).get(cfg, {})
        row = [cfg, next(c["method"] for c in report.configs if c["name"] == cfg), *cells,
               *(_fmt(avg.get(g, (None,))[0]) + (f"±{avg[g][1]:.1f}" if g in avg and avg[g][1] is not None else "")
                 for g in GROUPS)]
        if report.baseline:
            row += ["" if cfg == report.baseline else _ci(gains.get((cfg, "low"))),
                    "" if cfg == report.baseline else _ci(gains.get((cfg, "all")))]
        rows.append(row)
    return head, rows


def verdict(report: Report) -> str:
    """One paragraph: did multi-task beat the best single task on low-resource languages?"""
    if not report.overall:
        return ("No verdict: the study needs at least one single-task and one multi-task configuration with "
                "low-resource results on the same target.")
    best = max(report.overall, key=lambda o: o["delta"])
    per = report.multi_vs_single
    lines = []
    for o in report.overall:
        rows = [c for c in per if c.a == o["config"]]
        sig_pos = sum(1 for c in rows if c.low is not None and c.low > 0)
        sig_neg = sum(1 for c in rows if c.high is not None and c.high < 0)
        lines.append(f"- **{o['config']}** ({o['method']}): {o['delta']:+.1f} points on average over "
                     f"{o['targets']} target(s); its 95% interval lies above zero on {sig_pos}, below zero on "
                     f"{sig_neg}, and includes zero on {len(rows) - sig_pos - sig_neg}.")
    won = best["delta"] > 0
    best_rows = [c for c in per if c.a == best["config"]]
    above = sum(1 for c in best_rows if c.low is not None and c.low > 0)
    below = sum(1 for c in best_rows if c.high is not None and c.high < 0)
    if above and not below:
        strength = f"Its 95% interval lies above zero on {above} of {len(best_rows)} target(s)."
    elif below and not above:
        strength = f"Its 95% interval lies below zero on {below} of {len(best_rows)} target(s)."
    elif not above and not below:
        strength = ("Every one of its 95% intervals includes zero: at this budget the difference is within the "
                    "noise of the test sets.")
    else:
        strength = f"Its 95% interval lies above zero on {above} and below zero on {below} target(s): mixed."
    per_target = "; ".join(f"{t}: vs {b} {d:+.1f}" + (f" [{lo:+.1f}, {hi:+.1f}]" if lo is not None else "")
                           for t, (b, d, lo, hi) in best["per_target"].items())
    head = (f"**Multi-task {'beat' if won else 'did not beat'} the best single task on low-resource languages in "
            f"this run.** The strongest multi-task configuration, `{best['config']}` ({best['method']}), is "
            f"{best['delta']:+.1f} points {'above' if won else 'relative to'} the best single task per target, "
            f"averaged over {best['targets']} target(s) ({per_target}). {strength}")
    return head + "\n\n" + "\n".join(lines)


def _pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    matplotlib = import_optional("matplotlib", "plots", "drawing the report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    """``fig`` as PNG bytes (the figure is closed)."""
    plt = _pyplot()
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
            f"bootstrap interval over test examples.", "", "## Verdict", "", verdict(report), ""]
    if report.multi_vs_single:
        rows = [[c.target, c.a, c.b, _ci(c), c.languages] for c in report.multi_vs_single]
        out += ["### Multi-task minus the best single task (low-resource average)", "",
                tabulate(rows, ["target", "multi-task", "best single", "Δ [95% CI]", "languages"], tablefmt="github"),
                "", "The best single task is picked on the same test data, which favours it.", ""]
    if "summary" in plots:
        out += [f"![gains on low-resource languages]({plots['summary']})", ""]
    for t in report.targets:
        out += [f"## {t} ({report.primary.get(t, '?')})", ""]
        if t in report.scores:
            head, rows = target_table(report, t)
            out += [tabulate(rows, head, tablefmt="github", disable_numparse=True), ""]
        if t in plots:
            out += [f"![{t} gains per language]({plots[t]})", ""]
        gone = report.missing.get(t, {})
        if gone:
            out += ["Not scored: " + "; ".join(f"{lang} ({why})" for lang, why in sorted(gone.items())), ""]
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
    md = render_markdown(report, plots)
    atomic_write_text(folder / "report.md", md)
    body = {"study": report.study.get("study"), "study_hash": report.study.get("study_hash"),
            "baseline": report.baseline, "scores": report.scores, "averages": report.averages,
            "gains": [c.__dict__ for c in report.gains],
            "multi_vs_single": [c.__dict__ for c in report.multi_vs_single],
            "overall": report.overall, "missing": report.missing,
            "failed": [{"cell": c["cell"], "error": c.get("error")} for c in report.failed]}
    atomic_write_text(folder / "report.json", json.dumps(body, indent=2) + "\n")
    return folder / "report.md", report
