"""Reports from synthetic results stores with the real schema, against hand computations."""

from __future__ import annotations

import json
import random
from statistics import mean, stdev

import pytest

from adaptertx import data
from adaptertx.errors import AdaptertxError
from adaptertx.languages import is_low_resource
from adaptertx.metrics import PRIMARY, example_stats, score, stats_score
from adaptertx.report import build_report, render_markdown, target_table, verdict, write_report
from adaptertx.results import STORE_FILE, ResultsStore
from adaptertx.tasks import get_task

N = 20  # test examples per language in the accuracy stores


def correct_rows(k: int, n: int = N, salt: str = "") -> list[list[float]]:
    """``n`` accuracy rows with exactly ``k`` correct, at seeded random positions."""
    right = set(random.Random(f"{k}/{n}/{salt}").sample(range(n), k))
    return [[1.0] if i in right else [0.0] for i in range(n)]


def trace(config: str, target: str, seed: int) -> dict:
    return {"model": "me5-small", "quant": "int8", "fingerprint": "fp-0123456789",
            "intermediate": {"method": config}, "target_run": f"/study/cells/{config}/{target}/seed{seed}",
            "checkpoints": [{"role": "intermediate", "path": "/study/intermediate/siqa/adapter.safetensors",
                             "sha256": "a" * 64},
                            {"role": "target", "path": f"/study/cells/{config}/{target}/seed{seed}/checkpoints/"
                                                       "best.safetensors", "sha256": "b" * 64}],
            "config": {"target": target, "seed": seed}, "versions": {"adaptertx": "0.1.0", "torch": "2.4.0"},
            "seconds": 1.5}


def make_cell(config: str, method: str, target: str, seed: int, langs: dict[str, list], *,
              ids: str = "ids-0", missing: dict | None = None, scores: dict | None = None,
              learned: dict | None = None, floor: dict | None = None) -> dict:
    """A finished cell as ``run_study`` stores it (``{**base, "status", **EvalResult.record()}``)."""
    task = get_task(target)
    languages = {}
    for lang, rows in langs.items():
        sums = [sum(col) for col in zip(*rows, strict=True)]
        got = scores[lang] if scores else stats_score(task, [*sums, len(rows)])
        languages[lang] = {"scores": {k: round(v, 4) for k, v in got.items()}, "n": len(rows),
                           "low_resource": is_low_resource(lang), "split": "test", "source": "bundled",
                           "stats": rows, "ids_sha": ids, "floor": floor}
    return {"cell": f"{config}|{target}|seed{seed}", "config": config, "method": method, "target": target,
            "seed": seed, "intermediate": {"tasks": [] if method == "none" else ["siqa"], "dir": None},
            "status": "finished", "metric": task.metric, "primary": PRIMARY[task.metric], "languages": languages,
            "missing": missing or {}, "trace": trace(config, target, seed), "notes": [], "learned": learned}


def new_store(path, configs: list[tuple[str, str]], targets: list[str], seeds=(0,), name="tiny"):
    config = {"name": name, "model": "me5-small", "quant": "int8", "adapter": "seq_bn", "seeds": list(seeds),
              "configs": [{"name": n, "method": m, "tasks": [] if m == "none" else ["siqa"]} for n, m in configs],
              "targets": targets, "description": "A synthetic study."}
    return ResultsStore(path / STORE_FILE, {"study": name, "study_hash": f"hash-{name}", "config": config})


# ------------------------------------------------------------------------ the XCOPA study

CONFIGS = [("none", "none"), ("A", "single"), ("B", "single"), ("avg", "average"), ("mt", "multitask"),
           ("fus", "fusion")]
# Correct answers out of N per config and language (qu, sw low-resource; it not).
COUNTS = {"none": {"qu": 10, "sw": 10, "it": 14},
          "A": {"qu": 12, "sw": 14, "it": 20},    # best single on all languages, not on low-resource
          "B": {"qu": 14, "sw": 13, "it": 16},    # best single on low-resource (67.5 vs 65)
          "avg": {"qu": 15, "sw": 15, "it": 15},
          "mt": {"qu": 11, "sw": 12, "it": 17}}


def pct(k: int) -> float:
    return 100.0 * k / N


def xcopa_store(path, counts=COUNTS):
    store = new_store(path, CONFIGS, ["xcopa"])
    for cfg, method in CONFIGS[:-1]:
        langs = {lang: correct_rows(k, salt=f"{cfg}{lang}") for lang, k in counts[cfg].items()}
        store.add(make_cell(cfg, method, "xcopa", 0, langs,
                            missing={"ht": "no bundled xcopa data for ht", "sw": "scored elsewhere"}))
    store.add({"cell": "fus|xcopa|seed0", "config": "fus", "method": "fusion", "target": "xcopa", "seed": 0,
               "intermediate": {"tasks": ["siqa", "copa"], "dir": None}, "status": "failed",
               "error": "CUDA out of memory while fusing"})
    return store


def test_scores_and_group_averages(tmp_path):
    xcopa_store(tmp_path)
    r = build_report(tmp_path)
    assert r.targets == ["xcopa"] and r.baseline == "none" and r.primary == {"xcopa": "accuracy"}
    assert r.low_resource == {"xcopa": {"qu": True, "sw": True, "it": False}}
    for cfg, per in COUNTS.items():
        assert r.scores["xcopa"][cfg] == {lang: [pct(k)] for lang, k in per.items()}
    assert "fus" not in r.scores["xcopa"]
    # By hand: A = 60, 70, 100.
    assert r.averages["xcopa"]["A"]["all"] == (pytest.approx(230 / 3), None)
    assert r.averages["xcopa"]["A"]["low"] == (65.0, None)
    assert r.averages["xcopa"]["A"]["other"] == (100.0, None)
    assert r.averages["xcopa"]["B"]["low"] == (67.5, None)
    for cfg, per in COUNTS.items():
        got = r.averages["xcopa"][cfg]
        assert got["all"][0] == pytest.approx((pct(per["qu"]) + pct(per["sw"]) + pct(per["it"])) / 3)
        assert got["low"][0] == pytest.approx((pct(per["qu"]) + pct(per["sw"])) / 2)
        assert got["other"][0] == pytest.approx(pct(per["it"]))
    assert [c["cell"] for c in r.failed] == ["fus|xcopa|seed0"]
    assert r.missing == {"xcopa": {"ht": "no bundled xcopa data for ht"}}  # sw is scored, so not missing


def test_gains_intervals_and_best_single(tmp_path):
    xcopa_store(tmp_path)
    r = build_report(tmp_path)
    gains = {(c.a, c.group): c for c in r.gains}
    assert set(gains) == {(cfg, g) for cfg in ("A", "B", "avg", "mt") for g in ("all", "low", "other")}
    assert gains[("A", "low")].delta == pytest.approx(65.0 - 50.0)
    assert gains[("A", "all")].delta == pytest.approx(230 / 3 - 170 / 3)
    assert gains[("avg", "other")].delta == pytest.approx(75.0 - 70.0)
    assert gains[("mt", "low")].delta == pytest.approx(57.5 - 50.0)
    assert gains[("A", "low")].languages == 2 and gains[("A", "all")].languages == 3
    for c in r.gains:
        assert c.b == "none"
        assert c.low is not None and c.low <= c.delta <= c.high
        assert c.high - c.low > 1  # real resampling, not a degenerate interval
    # The best single task is chosen by its low-resource average (B), not the overall one (A).
    assert [(c.a, c.b, c.group) for c in r.multi_vs_single] == [("avg", "B", "low"), ("mt", "B", "low")]
    assert r.multi_vs_single[0].delta == pytest.approx(75.0 - 67.5)
    assert r.multi_vs_single[1].delta == pytest.approx(57.5 - 67.5)
    assert [o["config"] for o in r.overall] == ["avg", "mt"]
    assert r.overall[0]["per_target"]["xcopa"][:2] == ("B", pytest.approx(7.5))
    # Deterministic: the same store gives the same intervals.
    again = build_report(tmp_path)
    assert [(c.low, c.high) for c in again.gains] == [(c.low, c.high) for c in r.gains]
    assert [(c.low, c.high) for c in again.multi_vs_single] == [(c.low, c.high) for c in r.multi_vs_single]


LOW = ("qu", "sw", "ht")  # XCOPA's low-resource languages


def verdict_store(path, a_right, mt_right, seeds=(0, 1, 2), learned=None):
    """none / A (single) / mt (multitask) on XCOPA: ``a_right`` and ``mt_right`` correct of N per
    low-resource language (a number, or one per seed); ``learned``: {(config, seed): the cell's record}."""
    store = new_store(path, [("none", "none"), ("A", "single"), ("mt", "multitask")], ["xcopa"], seeds=seeds)
    for i, seed in enumerate(seeds):
        for cfg, method, k in (("none", "none", 10), ("A", "single", a_right), ("mt", "multitask", mt_right)):
            k = k[i] if isinstance(k, tuple) else k
            langs = {lang: correct_rows(k, salt=f"{cfg}{seed}{lang}") for lang in LOW}
            store.add(make_cell(cfg, method, "xcopa", seed, langs, learned=(learned or {}).get((cfg, seed)),
                                floor={"majority": 50.0, "chance": 50.0}))
    return store


def test_verdict_beat_no_clear_difference_and_lost(tmp_path):
    verdict_store(tmp_path / "up", 10, 18)
    r = build_report(tmp_path / "up")
    (c,) = r.combined
    assert c["config"] == "mt" and c["seeds"] == 3 and c["targets"] == ["xcopa"] and c["comparisons"] == 1
    assert c["delta"] == pytest.approx(40.0) and 0 < c["low"] <= c["delta"] <= c["high"]
    text = verdict(r)
    assert text.startswith("**Multi-task beat the best single task on low-resource languages.**")
    assert "`mt` (multitask), +40.0 points" in text and "languages × 3 seed(s) × test examples" in text
    assert "one single-task configuration, `A`: it is the best single task" in text
    verdict_store(tmp_path / "level", 14, 14)
    text = verdict(build_report(tmp_path / "level"))
    assert text.startswith("**No clear difference at this budget**")
    verdict_store(tmp_path / "down", 18, 10)
    assert verdict(build_report(tmp_path / "down")).startswith("**The best single task beat multi-task")
    verdict_store(tmp_path / "one", 10, 18, seeds=(0,))
    assert verdict(build_report(tmp_path / "one")).startswith("**No verdict at 1 seed(s).**")


def test_the_verdict_is_family_wise_over_the_multi_task_configurations(tmp_path):
    store = verdict_store(tmp_path, 10, 18)
    header_configs = ["none", "A", "mt"]
    assert [c["name"] for c in build_report(tmp_path).configs] == header_configs
    for seed in (0, 1, 2):  # a second multi-task configuration: two comparisons, 97.5% intervals each
        store.add(make_cell("avg", "average", "xcopa", seed,
                            {lang: correct_rows(16, salt=f"avg{seed}{lang}") for lang in LOW}))
    r = build_report(tmp_path)
    assert [c["config"] for c in r.combined] == ["mt", "avg"]
    assert all(c["comparisons"] == 2 and c["level"] == pytest.approx(0.975) for c in r.combined)
    assert "97.5% each (95% family-wise, Bonferroni over 2" in verdict(r)


def test_intervals_hold_the_variance_over_seeds(tmp_path):
    # No example variance (every row right, or every row wrong), seeds that disagree: per-seed
    # gains 100, 0, 0. Resampling only test examples would give [33.3, 33.3]; resampling the
    # seeds, the mean of three draws from {100, 0, 0} is 0 with probability 8/27 and 100 with 1/27.
    store = new_store(tmp_path, [("none", "none"), ("A", "single")], ["xcopa"], seeds=(0, 1, 2))
    for seed in (0, 1, 2):
        store.add(make_cell("none", "none", "xcopa", seed, {"qu": correct_rows(0)}))
        store.add(make_cell("A", "single", "xcopa", seed, {"qu": correct_rows(N if seed == 0 else 0)}))
    low = next(c for c in build_report(tmp_path).gains if c.group == "low")
    assert low.delta == pytest.approx(100 / 3)
    assert (low.low, low.high) == (0.0, 100.0)


def test_cells_that_did_not_learn_are_shown_and_left_out(tmp_path):
    flat = {"metric": "accuracy", "score": 50.0, "floor": 50.0, "difference": 0.0, "low": -3.0, "high": 3.0,
            "n": 100, "split": "test", "learned": False}
    fine = {**flat, "score": 70.0, "difference": 20.0, "low": 12.0, "high": 28.0, "learned": True}
    learned = {(cfg, seed): fine for cfg in ("none", "A", "mt") for seed in (0, 1, 2)}
    learned[("mt", 1)] = flat
    verdict_store(tmp_path, 10, (18, 20, 18), learned=learned)
    r = build_report(tmp_path)
    assert [c["cell"] for c in r.not_learned] == ["mt|xcopa|seed1"]
    assert "accuracy 50.0 vs majority floor 50.0: +0.0 [-3.0, +3.0], not clearly above it" in r.not_learned[0]["why"]
    # Left out of the configuration's means and averages (90 over seeds 0 and 2); seed 1's 100%
    # is shown in a row of its own.
    assert r.scores["xcopa"]["mt"]["qu"] == [90.0, 90.0]
    assert r.not_learned[0]["scores"] == {lang: 100.0 for lang in LOW}
    assert r.averages["xcopa"]["mt"]["low"][0] == pytest.approx(90.0)
    _, rows = target_table(r, "xcopa")
    assert rows[2][:3] == ["mt", "multitask", "90.0±0.0"]
    assert rows[3][:3] == ["mt † seed 1 (did not learn)", "multitask", "100.0"] and set(rows[3][5:]) == {""}
    assert rows[-2][:6] == ["floor: majority", "", "50.0", "50.0", "50.0", "50.0"]
    assert rows[-1][0] == "floor: chance"
    assert r.combined[0]["seeds"] == 2  # seed 1 pairs with nothing
    text = verdict(r)
    assert text.startswith("**No verdict at 2 seed(s).**")
    md = render_markdown(r, {})
    assert "## Cells that did not learn" in md and "mt|xcopa|seed1" in md


def test_a_configuration_none_of_whose_cells_learned_keeps_its_rows(tmp_path):
    flat = {"metric": "accuracy", "score": 50.0, "floor": 50.0, "difference": 0.0, "low": -3.0, "high": 3.0,
            "n": 100, "split": "test", "learned": False}
    verdict_store(tmp_path, 10, 18, learned={("mt", s): flat for s in (0, 1, 2)})
    r = build_report(tmp_path)
    assert "mt" not in r.scores["xcopa"] and "mt" not in r.averages["xcopa"]
    _, rows = target_table(r, "xcopa")
    assert [row[0] for row in rows[2:5]] == [f"mt † seed {s} (did not learn)" for s in (0, 1, 2)]
    assert all(row[2] == "90.0" for row in rows[2:5])


def test_a_language_the_user_placed_sorts_with_unseen_languages(tmp_path):
    # "xx-local" is no ISO code: the user gave its pretraining size when it was scored, and the
    # cell records it as low-resource; the report orders it without knowing it.
    store = new_store(tmp_path, [("none", "none")], ["xcopa"])
    cell = make_cell("none", "none", "xcopa", 0, {"qu": correct_rows(10), "it": correct_rows(14)})
    cell["languages"]["xx-local"] = {**cell["languages"]["qu"]}
    store.add(cell)
    head, _ = target_table(build_report(tmp_path), "xcopa")
    assert head[2:5] == ["qu*", "xx-local*", "it"]


def test_a_target_whose_cells_did_not_learn_is_left_out_of_the_verdict(tmp_path):
    flat = {"metric": "accuracy", "score": 50.0, "floor": 50.0, "difference": 0.0, "low": -3.0, "high": 3.0,
            "n": 100, "split": "test", "learned": False}
    verdict_store(tmp_path, 10, 18, learned={(cfg, s): flat for cfg in ("none", "A", "mt") for s in (0, 1, 2)})
    text = verdict(build_report(tmp_path))
    assert text.startswith("No verdict:")
    assert "Left out of the verdict: xcopa (9 cell(s) whose target adapter did not learn)" in text


def test_table_and_markdown(tmp_path):
    xcopa_store(tmp_path)
    r = build_report(tmp_path)
    head, rows = target_table(r, "xcopa")
    assert head == ["config", "method", "qu*", "sw*", "it", "avg", "low* avg", "other avg",
                    "Δ low* vs none [95% CI]", "Δ all vs none"]
    by = {row[0]: row for row in rows}
    assert list(by) == ["none", "A", "B", "avg", "mt"]
    assert by["A"][:8] == ["A", "single", "60.0", "70.0", "100.0", "76.7", "65.0", "100.0"]
    assert by["none"][8:] == ["", ""]
    assert by["A"][8].startswith("+15.0 [") and by["A"][9].startswith("+20.0 [")
    md = render_markdown(r, {})
    assert "## Failed cells" in md and "fus|xcopa|seed0" in md and "CUDA out of memory while fusing" in md
    assert "(1 failed)" in md
    assert "Not scored: ht (no bundled xcopa data for ht)" in md
    assert "No verdict at 1 seed(s)" in md and "| xcopa    | avg          | B             |" in md
    assert "fp-0123456789" in md and "target:seed0@bbbbbbbbbb" in md and "intermediate:siqa@aaaaaaaaaa" in md


def test_write_report_files(tmp_path):
    xcopa_store(tmp_path)
    md_path, r = write_report(tmp_path / STORE_FILE, tmp_path / "out")
    out = tmp_path / "out"
    assert md_path == out / "report.md"
    assert sorted(p.name for p in out.iterdir()) == ["gains_low_resource.png", "gains_xcopa.png", "report.json",
                                                     "report.md"]
    for png in ("gains_low_resource.png", "gains_xcopa.png"):
        blob = (out / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 1000
    md = md_path.read_text(encoding="utf-8")
    assert "![xcopa gains per language](gains_xcopa.png)" in md
    assert "![gains on low-resource languages](gains_low_resource.png)" in md
    body = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert body["study"] == "tiny" and body["study_hash"] == "hash-tiny" and body["baseline"] == "none"
    assert body["scores"]["xcopa"]["B"] == {"qu": [70.0], "sw": [65.0], "it": [80.0]}
    assert body["averages"]["xcopa"]["B"]["low"] == [67.5, None]
    gains = {(g["a"], g["group"]): g for g in body["gains"]}
    assert gains[("A", "low")]["delta"] == pytest.approx(15.0)
    assert gains[("A", "low")]["low"] == r.gains[[(c.a, c.group) for c in r.gains].index(("A", "low"))].low
    assert [(m["a"], m["b"]) for m in body["multi_vs_single"]] == [("avg", "B"), ("mt", "B")]
    assert body["failed"] == [{"cell": "fus|xcopa|seed0", "error": "CUDA out of memory while fusing"}]
    assert body["missing"] == {"xcopa": {"ht": "no bundled xcopa data for ht"}}
    # Default folder: report/ beside the store.
    md_default, _ = write_report(tmp_path)
    assert md_default == tmp_path / "report" / "report.md" and md_default.read_text(encoding="utf-8") == md


def test_store_without_cells_is_refused(tmp_path):
    new_store(tmp_path, CONFIGS, ["xcopa"])
    with pytest.raises(AdaptertxError, match="holds no cells yet"):
        write_report(tmp_path)
    assert not (tmp_path / "report").exists()
    with pytest.raises(AdaptertxError, match="no results store"):
        write_report(tmp_path / "elsewhere")


# ------------------------------------------------------------------------ intervals in corner cases


def test_identical_predictions_give_zero_interval_and_paired_resampling(tmp_path):
    store = new_store(tmp_path, [("none", "none"), ("same", "single"), ("plus2", "single")], ["xcopa"])
    base = {"qu": correct_rows(9, salt="q"), "it": correct_rows(13, salt="i")}
    store.add(make_cell("none", "none", "xcopa", 0, base))
    store.add(make_cell("same", "single", "xcopa", 0, {lang: [list(r) for r in rows] for lang, rows in base.items()}))
    plus2 = {}
    for lang, rows in base.items():  # right on every example the baseline gets, and two more
        wrong = [i for i, r in enumerate(rows) if r == [0.0]][:2]
        plus2[lang] = [[1.0] if i in wrong else list(r) for i, r in enumerate(rows)]
    store.add(make_cell("plus2", "single", "xcopa", 0, plus2))
    r = build_report(tmp_path)
    gains = {(c.a, c.group): c for c in r.gains}
    for g in ("all", "low", "other"):
        same = gains[("same", g)]
        assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
        # Paired: a resample can only show plus2 ahead or level, never behind.
        p = gains[("plus2", g)]
        assert p.delta == pytest.approx(10.0)
        assert 0.0 <= p.low <= p.delta <= p.high and p.high > p.low


def test_always_right_vs_always_wrong_is_exactly_100(tmp_path):
    store = new_store(tmp_path, [("none", "none"), ("A", "single")], ["xcopa"])
    store.add(make_cell("none", "none", "xcopa", 0, {"qu": correct_rows(0), "it": correct_rows(0)}))
    store.add(make_cell("A", "single", "xcopa", 0, {"qu": correct_rows(N), "it": correct_rows(N)}))
    for c in build_report(tmp_path).gains:
        assert (c.delta, c.low, c.high) == (100.0, 100.0, 100.0)


def test_different_test_examples_give_no_interval(tmp_path):
    store = new_store(tmp_path, [("none", "none"), ("A", "single")], ["xcopa"])
    store.add(make_cell("none", "none", "xcopa", 0, {"qu": correct_rows(8)}, ids="ids-first-20"))
    store.add(make_cell("A", "single", "xcopa", 0, {"qu": correct_rows(12)}, ids="ids-other-20"))
    r = build_report(tmp_path)
    low = next(c for c in r.gains if c.group == "low")
    assert low.delta == pytest.approx(20.0) and low.low is None and low.high is None
    _, rows = target_table(r, "xcopa")
    assert rows[1][-2:] == ["+20.0", "+20.0"]


def test_languages_are_resampled_independently(tmp_path):
    # Two languages with the same number of examples and mirrored patterns: the same
    # resample for both would make every replicate of the average exactly 0.
    store = new_store(tmp_path, [("none", "none"), ("A", "single")], ["tatoeba"])
    # Tatoeba rows: [en→x hit, x→en hit].
    first = [[1.0, 1.0] if i < N // 2 else [0.0, 1.0] for i in range(N)]
    second = [[0.0, 1.0] if i < N // 2 else [1.0, 1.0] for i in range(N)]
    store.add(make_cell("none", "none", "tatoeba", 0, {"sw": second, "yo": first}))
    store.add(make_cell("A", "single", "tatoeba", 0, {"sw": first, "yo": second}))
    low = next(c for c in build_report(tmp_path).gains if c.group == "low")
    assert low.delta == 0.0 and low.low < 0.0 < low.high


def test_several_seeds_mean_and_std(tmp_path):
    store = new_store(tmp_path, [("none", "none"), ("A", "single")], ["xcopa"], seeds=(0, 1))
    counts = {("none", 0): {"qu": 10, "it": 14}, ("none", 1): {"qu": 12, "it": 16},
              ("A", 0): {"qu": 12, "it": 15}, ("A", 1): {"qu": 16, "it": 15}}
    for seed in (0, 1):
        for cfg, method in (("none", "none"), ("A", "single")):
            langs = {lang: correct_rows(k, salt=f"{cfg}{seed}{lang}") for lang, k in counts[(cfg, seed)].items()}
            store.add(make_cell(cfg, method, "xcopa", seed, langs))
    r = build_report(tmp_path)
    assert r.scores["xcopa"]["none"] == {"qu": [50.0, 60.0], "it": [70.0, 80.0]}
    m, s = r.averages["xcopa"]["none"]["all"]  # per seed: 60, 70
    assert m == pytest.approx(65.0) and s == pytest.approx(stdev([60.0, 70.0]))
    m, s = r.averages["xcopa"]["A"]["all"]  # per seed: 67.5, 77.5
    assert m == pytest.approx(72.5) and s == pytest.approx(stdev([67.5, 77.5]))
    all_gain = next(c for c in r.gains if c.group == "all")
    assert all_gain.delta == pytest.approx(mean([70.0 - 55.0, 75.0 - 75.0]))
    assert all_gain.low <= all_gain.delta <= all_gain.high
    _, rows = target_table(r, "xcopa")
    assert rows[0][2:5] == ["55.0±7.1", "75.0±7.1", "65.0±7.1"]
    assert rows[1][2:5] == ["70.0±14.1", "75.0±0.0", "72.5±7.1"]


# ------------------------------------------------------------------------ entity F1


def _ner_examples(lang: str) -> list[dict]:
    rows = data.load("masakhaner", lang, "test")
    with_entities = [ex for ex in rows if any(t != "O" for t in ex["tags"])][:20]
    without = [ex for ex in rows if all(t == "O" for t in ex["tags"])][:20]
    assert len(with_entities) == len(without) == 20
    return with_entities + without


def test_entity_f1_is_corpus_level(tmp_path):
    task = get_task("masakhaner")
    store = new_store(tmp_path, [("none", "none"), ("A", "single"), ("B", "single")], ["masakhaner"])
    examples = {lang: _ner_examples(lang) for lang in ("sw", "yo")}
    rng = random.Random(7)
    predictions = {
        "none": {lang: [["O"] * len(ex["tags"]) for ex in exs] for lang, exs in examples.items()},
        "A": {lang: [list(ex["tags"]) for ex in exs] for lang, exs in examples.items()},
        "B": {lang: [[rng.choice(task.labels) if rng.random() < 0.2 else t for t in ex["tags"]] for ex in exs]
              for lang, exs in examples.items()},
    }
    expected = {}
    for cfg, per_lang in predictions.items():
        langs, scores = {}, {}
        for lang, preds in per_lang.items():
            langs[lang] = example_stats(task, preds, examples[lang], lang=lang)
            scores[lang] = score(task, preds, examples[lang], lang=lang)  # seqeval, corpus level
            expected[(cfg, lang)] = scores[lang]["f1"]
        store.add(make_cell(cfg, "none" if cfg == "none" else "single", "masakhaner", 0, langs,
                            scores=scores, missing={"luo": "no bundled masakhaner data for luo"}))
    r = build_report(tmp_path)
    assert r.primary == {"masakhaner": "f1"}
    assert r.scores["masakhaner"]["A"] == {"sw": [100.0], "yo": [100.0]}
    assert r.scores["masakhaner"]["none"] == {"sw": [0.0], "yo": [0.0]}
    assert 0 < expected[("B", "sw")] < 100
    gains = {(c.a, c.group): c for c in r.gains}
    assert ("A", "other") not in gains  # both languages are low-resource
    # Every resample holds sentences with entities, all found by A: corpus F1 is 100 each
    # time (a mean of per-sentence F1s, 0 on sentences without entities, would be ~50).
    a = gains[("A", "low")]
    assert (a.delta, a.low, a.high) == (100.0, 100.0, 100.0)
    b = gains[("B", "low")]
    assert b.delta == pytest.approx(mean([round(expected[("B", "sw")], 4), round(expected[("B", "yo")], 4)]))
    assert b.low <= b.delta <= b.high and b.high - b.low > 1
    assert r.averages["masakhaner"]["B"]["low"][0] == pytest.approx(b.delta)
    md = render_markdown(r, {})
    assert "## masakhaner (f1)" in md and "Not scored: luo (no bundled masakhaner data for luo)" in md
