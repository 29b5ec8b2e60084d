"""Which intermediate task goes with which language: the Fusion's attention, the per-language
ranking of the single tasks, and how far the two agree.

Three views of one study's results store, computed by :func:`build_views` for
:mod:`adaptertx.report`:

- **Fusion attention** (:class:`AttentionView`, one per target and Fusion configuration): the
  weight the Fusion gives each task adapter, mean over the real tokens of each language
  (recorded while scoring, :mod:`adaptertx.fusion_attention`), averaged over the layers and shown
  for the top layers, mean over seeds with its spread; per gold label for classification targets.
- **Per-language ranking** (:class:`RankingRow`): for each language, the single-task
  configuration that scores best (mean over seeds), its gain over the baseline with the report's
  paired hierarchical bootstrap interval (seeds, then test examples), and in how many seeds it
  was the best. It is picked on the same test data it is shown on, which favours it.
- **Agreement** (:class:`Agreement`): does each language lean, in the Fusion, on the task whose
  single-task cell is best for it? Per target and Fusion: how many languages' largest weight
  (mean over layers) falls on their best single task; the mean over languages of the Spearman
  correlation between the weights and the single-task scores over the tasks (*within*
  languages); and, over languages, the Spearman correlation between a task's weight and its
  single-task score relative to the language's mean over the tasks, averaged over the tasks
  (*across* languages; with two tasks, the same for both). Intervals: 95% percentile bootstrap
  over languages. These are observations about two measurements of one study, not causes: an
  attention weight says what the Fusion mixes, not what helps.

:func:`compare_studies` sets two studies' per-language rankings side by side
(``adaptertx report A B``). A view that cannot be computed is absent with the reason
(:attr:`TaskViews.absent`), never an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import mean, stdev

import numpy as np

from adaptertx.metrics import boot_indices

#: How many of the highest layers the attention view shows one by one (besides their mean).
TOP_LAYERS = 3


@dataclass
class AttentionView:
    """One Fusion configuration's attention on one target (languages low-resource first).

    ``mean[lang]``: per layer, per adapter, the mean over seeds of the token-mean weight;
    ``std[lang]``: its standard deviation over seeds (``None`` with one seed); ``labels[lang]``:
    per gold label, the seed-mean layer-mean weights (classification targets); ``per_seed[lang]``:
    the weights of each seed.
    """

    target: str
    config: str
    adapters: list[str]
    layers: list[str]
    languages: list[str]
    low_resource: dict[str, bool]
    seeds: list[int]
    mean: dict[str, list[list[float]]]
    std: dict[str, list[list[float]] | None]
    labels: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    per_seed: dict[str, list] = field(default_factory=dict, repr=False)  # lang -> (layers, adapters) per seed

    def layer_mean(self, lang: str) -> list[float]:
        """Per adapter: the weight averaged over the layers."""
        return [float(v) for v in np.mean(self.mean[lang], axis=0)]

    def layer_mean_std(self, lang: str) -> list[float] | None:
        """Per adapter: the spread over seeds of the layer-averaged weight (``None``: one seed)."""
        per_seed = self.per_seed.get(lang)
        if per_seed is None or len(per_seed) < 2:
            return None
        return [float(v) for v in np.std(np.mean(per_seed, axis=1), axis=0, ddof=1)]

    def top(self) -> list[int]:
        """Indices of the top layers shown one by one (the highest :data:`TOP_LAYERS`)."""
        return list(range(max(0, len(self.layers) - TOP_LAYERS), len(self.layers)))



@dataclass
class RankingRow:
    """One language's single tasks, best first (mean over seeds), and the best one's gain."""

    target: str
    lang: str
    low_resource: bool
    ranking: list[tuple[str, float, float | None]]  # (config, mean, std over seeds)
    best_seeds: int  # seeds in which the best configuration was the best
    seeds: int
    gain: object | None  # a report Comparison: best minus the baseline on this language

    @property
    def best(self) -> str:
        return self.ranking[0][0]


@dataclass
class Agreement:
    """How far a Fusion's leaning matches the single-task ranking on one target (module doc)."""

    target: str
    config: str
    tasks: list[str]
    languages: list[str]
    agree: list[str]  # languages whose largest Fusion weight is on their best single task
    within: float | None
    within_ci: tuple[float, float] | None
    across: float | None
    across_ci: tuple[float, float] | None


@dataclass
class TaskViews:
    """The three views of a study (see the module doc); ``absent``: target (or ``"*"``) -> why a
    view is not shown."""

    attention: list[AttentionView]
    rankings: dict[str, list[RankingRow]]
    agreement: list[Agreement]
    absent: dict[str, list[str]]
    tasks: dict[str, str]  # single-task configuration -> its task

    def to_json(self) -> dict:
        def gain(c):
            return None if c is None else {k: getattr(c, k) for k in ("delta", "low", "high")}

        return {"attention": [{k: v for k, v in asdict(a).items() if k != "per_seed"} | {
                    "layer_mean": {lang: a.layer_mean(lang) for lang in a.languages},
                    "layer_mean_std": {lang: a.layer_mean_std(lang) for lang in a.languages}}
                    for a in self.attention],
                "rankings": {t: [{"lang": r.lang, "low_resource": r.low_resource, "ranking": r.ranking,
                                  "best": r.best, "best_seeds": r.best_seeds, "seeds": r.seeds,
                                  "gain": gain(r.gain)} for r in rows] for t, rows in self.rankings.items()},
                "agreement": [asdict(a) for a in self.agreement], "absent": self.absent, "tasks": self.tasks}


# ------------------------------------------------------------------------------ computing


def ranks(values) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tie = v == value
        r[tie] = r[tie].mean()
    return r


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (``None`` when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _attention_views(cells: list[dict], targets: list[str], fusions: list[str], low_res: dict,
                     order) -> tuple[list[AttentionView], dict[str, list[str]]]:
    views, absent = [], {}
    for t in targets:
        for f in fusions:
            mine = sorted((c for c in cells if c["target"] == t and c["config"] == f), key=lambda c: c["seed"])
            recorded = [c for c in mine if c.get("fusion_attention")]
            if not mine:
                continue
            if not recorded:
                absent.setdefault(t, []).append(
                    f"`{f}`: its cells hold no Fusion attention (retrieval targets encode without a target "
                    f"adapter, and stores written before the attention was recorded lack it)")
                continue
            first = recorded[0]["fusion_attention"]
            adapters, layers = first["adapters"], first["layers"]
            per_lang: dict[str, list] = {}
            by_label: dict[str, dict[str, list]] = {}
            for c in recorded:
                fa = c["fusion_attention"]
                if fa["adapters"] != adapters or fa["layers"] != layers:
                    continue
                for lang, entry in fa["languages"].items():
                    if entry.get("mean") is not None:
                        per_lang.setdefault(lang, []).append(entry["mean"])
                    for label, e in (entry.get("labels") or {}).items():
                        if e.get("mean") is not None:
                            by_label.setdefault(lang, {}).setdefault(label, []).append(np.mean(e["mean"], axis=0))
            langs = order(t, [lang for lang in per_lang if lang in low_res.get(t, {})])
            if not langs:
                continue
            view = AttentionView(t, f, adapters, layers, langs, {lang: low_res[t][lang] for lang in langs},
                                 [c["seed"] for c in recorded],
                                 {lang: np.mean(per_lang[lang], axis=0).tolist() for lang in langs},
                                 {lang: (np.std(per_lang[lang], axis=0, ddof=1).tolist()
                                         if len(per_lang[lang]) > 1 else None) for lang in langs},
                                 {lang: {lab: np.mean(v, axis=0).tolist() for lab, v in sorted(by_label[lang].items())}
                                  for lang in langs if lang in by_label})
            view.per_seed = {lang: per_lang[lang] for lang in langs}
            views.append(view)
    return views, absent


def _rankings(table, t: str, singles: list[str], baseline: str | None, order) -> list[RankingRow]:
    per_cfg = {cfg: table.scores.get(t, {}).get(cfg, {}) for cfg in singles}
    langs = order(t, [lang for lang in table.low_res.get(t, {})
                      if sum(1 for cfg in singles if lang in per_cfg[cfg]) >= 2])
    rows = []
    for lang in langs:
        have = [cfg for cfg in singles if lang in per_cfg[cfg]]
        ranking = sorted(((cfg, mean(per_cfg[cfg][lang]),
                           stdev(per_cfg[cfg][lang]) if len(per_cfg[cfg][lang]) > 1 else None) for cfg in have),
                         key=lambda r: (-r[1], singles.index(r[0])))
        best = ranking[0][0]
        common = sorted(set.intersection(*(table.seeds_of.get((t, cfg), set()) for cfg in have)))
        wins = 0
        for s in common:
            at = {cfg: per_cfg[cfg][lang][sorted(table.seeds_of[(t, cfg)]).index(s)] for cfg in have}
            wins += max(have, key=lambda cfg: (at[cfg], -singles.index(cfg))) == best
        gain = table.compare(t, best, baseline, lang, [lang]) if baseline is not None else None
        rows.append(RankingRow(t, lang, bool(table.low_res[t][lang]), ranking, wins, len(common), gain))
    return rows


def _agreement(view: AttentionView, rows: list[RankingRow], tasks: dict[str, str], rounds: int) -> Agreement | None:
    """``view``'s leaning against the single-task ranking of the same languages (module doc)."""
    by_task = {tasks[cfg]: cfg for row in rows for cfg, _, _ in row.ranking}
    shared = [task for task in view.adapters if task in by_task]
    if len(shared) < 2:
        return None
    cols = [view.adapters.index(task) for task in shared]
    att, sc, agree, langs = [], [], [], []
    for row in rows:
        scores = {tasks[cfg]: m for cfg, m, _ in row.ranking}
        if row.lang not in view.mean or any(task not in scores for task in shared):
            continue
        a = np.array(view.layer_mean(row.lang))[cols]
        s = np.array([scores[task] for task in shared])
        langs.append(row.lang)
        att.append(a)
        sc.append(s)
        if shared[int(np.argmax(a))] == shared[int(np.argmax(s))]:
            agree.append(row.lang)
    if not langs:
        return None
    att, sc = np.array(att), np.array(sc)

    def within(idx):
        vals = [v for i in idx if (v := spearman(att[i], sc[i])) is not None]
        return mean(vals) if vals else None

    def across(idx):
        rel = sc[idx] - sc[idx].mean(axis=1, keepdims=True)
        vals = [v for k in range(len(shared)) if (v := spearman(att[idx, k], rel[:, k])) is not None]
        return mean(vals) if vals else None

    def interval(stat, key):
        if len(langs) < 3:
            return None
        boot = [v for idx in boot_indices(len(langs), key, rounds) if (v := stat(idx)) is not None]
        return tuple(float(v) for v in np.percentile(boot, [2.5, 97.5])) if boot else None

    everyone = np.arange(len(langs))
    key = f"agreement/{view.target}/{view.config}"
    return Agreement(view.target, view.config, shared, langs, agree, within(everyone),
                     interval(within, key + "/within"), across(everyone) if len(langs) >= 3 else None,
                     interval(across, key + "/across"))


def build_views(cells: list[dict], table, configs: list[dict], baseline: str | None, targets: list[str], order,
                rounds: int = 1000) -> TaskViews:
    """The views of the finished cells that learned (``cells``), scored in ``table`` (the
    report's ``_Cells``); ``configs``: the study's configurations (name, method, tasks);
    ``order(target, langs)``: the report's language order."""
    fusions = [c["name"] for c in configs if c["method"] == "fusion"]
    singles = [c["name"] for c in configs if c["method"] == "single"]
    tasks = {c["name"]: (c.get("tasks") or [c["name"]])[0] for c in configs if c["method"] == "single"}
    absent: dict[str, list[str]] = {}
    if not fusions:
        absent["*"] = ["No Fusion configuration in this study: there is no Fusion attention to show, nor to compare "
                       "with the single-task ranking."]
    views, why = _attention_views(cells, targets, fusions, table.low_res, order)
    for t, reasons in why.items():
        absent.setdefault(t, []).extend(reasons)
    rankings = {}
    for t in targets:
        have = [cfg for cfg in singles if cfg in table.scores.get(t, {})]
        if len(have) < 2:
            named = f" (`{have[0]}`)" if have else ""
            absent.setdefault(t, []).append(
                f"{len(have)} single-task configuration{'' if len(have) == 1 else 's'} with scores{named}: a "
                f"per-language ranking of the intermediate tasks needs two or more, so neither the ranking nor "
                f"its agreement with the Fusion is shown.")
            continue
        rankings[t] = _rankings(table, t, have, baseline, order)
    agreement = []
    for view in views:
        rows = rankings.get(view.target)
        if rows is None:
            continue
        got = _agreement(view, rows, tasks, rounds)
        if got is None:
            absent.setdefault(view.target, []).append(
                f"`{view.config}`: fewer than two of its tasks ({', '.join(view.adapters)}) have single-task "
                f"cells on the same languages, so its leaning cannot be set against their ranking.")
        else:
            agreement.append(got)
    return TaskViews(views, rankings, agreement, absent, tasks)


# ------------------------------------------------------------------------------ writing


def _pct(v: float) -> str:
    return f"{100 * v:.0f}"


def _ci(c) -> str:
    if c is None:
        return "–"
    if c.low is None:
        return f"{c.delta:+.1f}"
    return f"{c.delta:+.1f} [{c.low:+.1f}, {c.high:+.1f}]"


def _rho(v: float | None, ci: tuple[float, float] | None) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _lang(lang: str, low: bool) -> str:
    return f"{lang}*" if low else lang


def attention_table(view: AttentionView) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per language, each adapter's weight (percent; layer mean ± std over
    seeds, then the top layers), and the task it leans on most."""
    top = view.top()
    head = ["language"] + [f"{a} (layer mean)" for a in view.adapters] + \
           [f"{a} (layer {view.layers[i]})" for i in top for a in view.adapters] + ["leans on"]
    rows = []
    for lang in view.languages:
        m, sd = view.layer_mean(lang), view.layer_mean_std(lang)
        cells = [_pct(v) + (f"±{_pct(sd[k])}" if sd else "") for k, v in enumerate(m)]
        cells += [_pct(view.mean[lang][i][k]) for i in top for k in range(len(view.adapters))]
        rows.append([_lang(lang, view.low_resource[lang]), *cells, view.adapters[int(np.argmax(m))]])
    return head, rows


def ranking_table(rows: list[RankingRow], tasks: dict[str, str], baseline: str | None, views: list[AttentionView]
                  ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one target's per-language ranking, with each Fusion's leaning beside it."""
    head = ["language", "best single task", "score", f"Δ vs {baseline} [95% CI]" if baseline else "Δ",
            "best in seeds", "ranking (mean score)"] + [f"{v.config} leans on" for v in views]
    def name(cfg: str) -> str:
        task = tasks.get(cfg, cfg)
        return cfg if task == cfg else f"{cfg} ({task})"

    out = []
    for r in rows:
        best, score, sd = r.ranking[0]
        lean = []
        for v in views:
            lean.append(v.adapters[int(np.argmax(v.layer_mean(r.lang)))] if r.lang in v.mean else "–")
        out.append([_lang(r.lang, r.low_resource), name(best),
                    f"{score:.1f}" + (f"±{sd:.1f}" if sd is not None else ""), _ci(r.gain),
                    f"{r.best_seeds}/{r.seeds}", " > ".join(f"{name(c)} {m:.1f}" for c, m, _ in r.ranking), *lean])
    return head, out


def agreement_sentence(a: Agreement) -> str:
    """The observation, with its numbers (never a causal claim)."""
    n = len(a.languages)
    text = (f"Observation on `{a.target}` (`{a.config}` over {', '.join(a.tasks)}; {n} language(s)): in "
            f"{len(a.agree)} of {n} the Fusion's largest weight (mean over layers) is on the task whose single-task "
            f"cell scores best there (chance: {n / len(a.tasks):.1f} of {n}). Spearman ρ between the weights and "
            f"the single-task scores, within each language over the tasks, mean over languages: "
            f"{_rho(a.within, a.within_ci)}")
    if len(a.tasks) == 2:
        text += " (with two tasks each language gives +1 or −1)"
    text += f"; across languages: {_rho(a.across, a.across_ci)}"
    text += (". Intervals: 95% bootstrap over languages. Both measurements come from this study's cells; an "
             "attention weight describes what the Fusion mixes, not what helps a language.")
    return text


def render(views: TaskViews, baseline: str | None, plots: dict[str, str]) -> list[str]:
    """The report's Markdown section (``plots``: ``"<target>/<config>"`` → heatmap file)."""
    from tabulate import tabulate

    out = ["## Which task for which language", "",
           "The Fusion's attention over the task adapters (mean over each language's real tokens, recorded while "
           "scoring; percent, mean over seeds ± their spread), each language's best single intermediate task, and "
           "how far the two agree. Languages run from the least pretraining data to the most (low-resource `*`). "
           "The best single task is picked on the same test data it is shown on, which favours it.", ""]
    for why in views.absent.get("*", []):
        out += [f"*{why}*", ""]
    targets = list(dict.fromkeys([*(v.target for v in views.attention), *views.rankings,
                                  *(t for t in views.absent if t != "*")]))
    for t in targets:
        out += [f"### {t}", ""]
        tviews = [v for v in views.attention if v.target == t]
        for v in tviews:
            head, rows = attention_table(v)
            out += [f"Attention of `{v.config}` ({len(v.seeds)} seed(s); layers {v.layers[0]}–{v.layers[-1]}):", "",
                    tabulate(rows, head, tablefmt="github", disable_numparse=True), ""]
            if f"{t}/{v.config}" in plots:
                out += [f"![{t}: attention of {v.config}]({plots[f'{t}/{v.config}']})", ""]
            if v.labels:
                labels = sorted({lab for per in v.labels.values() for lab in per})
                head = ["language", "gold label"] + list(v.adapters)
                rows = [[_lang(lang, v.low_resource[lang]), lab, *(_pct(x) for x in v.labels[lang][lab])]
                        for lang in v.languages for lab in labels if lab in v.labels.get(lang, {})]
                out += ["By gold label (layer mean):", "", tabulate(rows, head, tablefmt="github",
                                                                    disable_numparse=True), ""]
        if t in views.rankings:
            head, rows = ranking_table(views.rankings[t], views.tasks, baseline, tviews)
            out += ["Best single intermediate task per language:", "",
                    tabulate(rows, head, tablefmt="github", disable_numparse=True), ""]
        for a in views.agreement:
            if a.target == t:
                out += [agreement_sentence(a), ""]
        for why in views.absent.get(t, []):
            out += [f"*Not shown: {why}*", ""]
    return out


# ------------------------------------------------------------------------------ two studies


@dataclass
class RankingComparison:
    """Two studies' per-language rankings of the single tasks they share, on the targets and
    languages they share."""

    a: str
    b: str
    tasks: list[str]
    rows: list[dict]  # {"target", "lang", "low_resource", "best_a", "best_b", "rho"}
    summary: list[dict]  # per target: {"target", "languages", "same", "rho", "rho_ci"}
    absent: list[str]


def _by_task(views: TaskViews) -> dict[str, dict[str, dict[str, float]]]:
    """target -> lang -> task -> mean score."""
    return {t: {r.lang: {views.tasks.get(c, c): m for c, m, _ in r.ranking} for r in rows}
            for t, rows in views.rankings.items()}


def compare_studies(a, b, *, rounds: int = 1000) -> RankingComparison:
    """Set the per-language rankings of two study reports (``adaptertx.report.Report``) side by
    side: per target, how often both name the same best task, and the Spearman correlation of
    the shared tasks' scores per language (mean over languages, 95% bootstrap over languages)."""
    name_a, name_b = a.study.get("study", "A"), b.study.get("study", "B")
    ra, rb = _by_task(a.views), _by_task(b.views)
    absent = [f"{name}: {why}" for name, rep in ((name_a, a), (name_b, b))
              for t, whys in rep.views.absent.items() for why in whys if "single-task" in why]
    tasks = sorted(set(a.views.tasks.values()) & set(b.views.tasks.values()))
    if len(tasks) < 2:
        absent.append(f"the studies share {len(tasks)} single intermediate task(s) "
                      f"({', '.join(tasks) or 'none'}); a ranking needs two")
        return RankingComparison(name_a, name_b, tasks, [], [], absent)
    rows, summary = [], []
    for t in [t for t in ra if t in rb]:
        langs = [lang for lang in ra[t] if lang in rb[t]
                 and all(task in ra[t][lang] and task in rb[t][lang] for task in tasks)]
        if not langs:
            absent.append(f"{t}: no language scored under the shared tasks in both studies")
            continue
        rhos = []
        for lang in langs:
            sa, sb = [ra[t][lang][k] for k in tasks], [rb[t][lang][k] for k in tasks]
            rho = spearman(sa, sb)
            rhos.append(rho)
            rows.append({"target": t, "lang": lang, "low_resource": a.low_resource[t].get(lang, False),
                         "best_a": tasks[int(np.argmax(sa))], "best_b": tasks[int(np.argmax(sb))], "rho": rho})
        vals = [r for r in rhos if r is not None]
        ci = None
        if len(vals) >= 3:
            boot = [mean(np.asarray(vals)[idx]) for idx in boot_indices(len(vals), f"studies/{t}", rounds)]
            ci = tuple(float(v) for v in np.percentile(boot, [2.5, 97.5]))
        mine = [r for r in rows if r["target"] == t]
        summary.append({"target": t, "languages": len(langs), "same": sum(r["best_a"] == r["best_b"] for r in mine),
                        "rho": mean(vals) if vals else None, "rho_ci": ci})
    return RankingComparison(name_a, name_b, tasks, rows, summary, absent)


def render_comparison(c: RankingComparison) -> str:
    """The comparison as Markdown."""
    from tabulate import tabulate

    out = [f"# Per-language task rankings: {c.a} vs {c.b}", "",
           f"Single intermediate tasks in both: {', '.join(c.tasks) or 'none'}. Per language, the best of them in "
           f"each study (mean over seeds) and the Spearman ρ of their scores between the studies.", ""]
    if c.summary:
        rows = [[s["target"], s["languages"], f"{s['same']}/{s['languages']}", _rho(s["rho"], s["rho_ci"])]
                for s in c.summary]
        out += [tabulate(rows, ["target", "languages", "same best task", "mean ρ [95% CI over languages]"],
                         tablefmt="github", disable_numparse=True), ""]
        rows = [[r["target"], _lang(r["lang"], r["low_resource"]), r["best_a"], r["best_b"],
                 "–" if r["rho"] is None else f"{r['rho']:+.2f}"] for r in c.rows]
        out += [tabulate(rows, ["target", "language", f"best in {c.a}", f"best in {c.b}", "ρ"], tablefmt="github",
                         disable_numparse=True), ""]
    out += [f"*Not compared: {why}*" for why in c.absent]
    return "\n".join(out) + "\n"
