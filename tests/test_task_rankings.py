"""Which task for which language: the Fusion's attention, the per-language ranking of the single
tasks and their agreement, from synthetic results stores with the real schema."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from adaptertx.languages import is_low_resource
from adaptertx.report import build_report, render_markdown, write_comparison, write_report
from adaptertx.results import STORE_FILE, ResultsStore
from adaptertx.task_rankings import ranks, spearman

N = 20
CONFIGS = [("none", "none", []), ("A", "single", ["siqa"]), ("B", "single", ["mrpc"]),
           ("fus", "fusion", ["siqa", "mrpc"])]
# Correct answers out of N, per seed: A is best on qu and it, B on sw.
COUNTS = {"none": {"qu": (10, 10), "sw": (10, 11), "it": (12, 12)},
          "A": {"qu": (15, 14), "sw": (11, 12), "it": (18, 17)},
          "B": {"qu": (12, 12), "sw": (15, 13), "it": (13, 14)},
          "fus": {"qu": (14, 14), "sw": (14, 14), "it": (16, 16)}}
# The Fusion's weights (siqa, mrpc) per language, two layers, per seed: it leans on siqa on qu and
# it, on mrpc on sw only in layer 1 (layer mean: siqa) -> agrees on qu and it, not on sw.
ATTENTION = {"qu": ([[0.7, 0.3], [0.8, 0.2]], [[0.6, 0.4], [0.7, 0.3]]),
             "sw": ([[0.7, 0.3], [0.4, 0.6]], [[0.7, 0.3], [0.5, 0.5]]),
             "it": ([[0.9, 0.1], [0.9, 0.1]], [[0.8, 0.2], [0.8, 0.2]])}


def rows(k: int, salt: str) -> list[list[float]]:
    right = set(random.Random(f"{k}/{salt}").sample(range(N), k))
    return [[1.0] if i in right else [0.0] for i in range(N)]


def cell(cfg, method, tasks, seed, counts, attention=None, target="xcopa"):
    languages = {lang: {"scores": {"accuracy": 100.0 * k[seed] / N}, "n": N, "low_resource": is_low_resource(lang),
                        "split": "test", "source": "bundled", "stats": rows(k[seed], f"{cfg}{lang}{seed}"),
                        "ids_sha": "ids", "floor": None} for lang, k in counts.items()}
    out = {"cell": f"{cfg}|{target}|seed{seed}", "config": cfg, "method": method, "target": target, "seed": seed,
           "intermediate": {"tasks": tasks, "dir": None}, "status": "finished", "metric": "accuracy",
           "primary": "accuracy", "languages": languages, "missing": {}, "trace": {}, "notes": [], "learned": None}
    if attention is not None:
        out["fusion_attention"] = {"adapters": tasks, "layers": ["0", "1"], "languages": {
            lang: {"tokens": 100, "mean": per_seed[seed]} for lang, per_seed in attention.items()}}
    return out


def store(path, configs=CONFIGS, counts=COUNTS, attention=ATTENTION, name="tiny", seeds=(0, 1)):
    header = {"name": name, "seeds": list(seeds), "targets": ["xcopa"],
              "configs": [{"name": n, "method": m, "tasks": t} for n, m, t in configs]}
    s = ResultsStore(path / STORE_FILE, {"study": name, "study_hash": f"hash-{name}", "config": header})
    for seed in seeds:
        for cfg, method, tasks in configs:
            s.add(cell(cfg, method, tasks, seed, counts[cfg], attention if method == "fusion" else None))
    return path


def test_spearman_with_ties():
    assert list(ranks([3, 1, 1, 2])) == [4, 1.5, 1.5, 3]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_attention_view_is_the_seed_mean_in_pretraining_order(tmp_path):
    r = build_report(store(tmp_path), rounds=200)
    (view,) = r.views.attention
    assert (view.target, view.config, view.adapters, view.layers) == ("xcopa", "fus", ["siqa", "mrpc"], ["0", "1"])
    assert view.languages == ["qu", "sw", "it"] and view.seeds == [0, 1]  # least CC-100 data first
    np.testing.assert_allclose(view.mean["sw"], [[0.7, 0.3], [0.45, 0.55]])
    np.testing.assert_allclose(view.layer_mean("sw"), [0.575, 0.425])
    # The spread over seeds of the layer mean: seeds give 0.75 and 0.65 on qu.
    np.testing.assert_allclose(view.layer_mean_std("qu"), [np.std([0.75, 0.65], ddof=1)] * 2)
    np.testing.assert_allclose(view.std["it"], [[np.std([0.9, 0.8], ddof=1)] * 2] * 2)


def test_ranking_gain_and_agreement_by_hand(tmp_path):
    r = build_report(store(tmp_path), rounds=300)
    ranking = {row.lang: row for row in r.views.rankings["xcopa"]}
    assert [row.lang for row in r.views.rankings["xcopa"]] == ["qu", "sw", "it"]
    assert ranking["qu"].best == "A" and ranking["sw"].best == "B" and ranking["it"].best == "A"
    assert ranking["qu"].ranking[0][1] == pytest.approx(72.5) and ranking["qu"].ranking[0][2] == pytest.approx(
        np.std([75, 70], ddof=1))
    assert (ranking["sw"].best_seeds, ranking["sw"].seeds) == (2, 2)  # 75 vs 55, 65 vs 60
    assert (ranking["it"].best_seeds, ranking["it"].seeds) == (2, 2)
    gain = ranking["sw"].gain  # B minus none on sw: (75 + 65) / 2 - (50 + 55) / 2
    assert gain.delta == pytest.approx(17.5) and gain.low is not None and gain.low <= 17.5 <= gain.high
    (a,) = r.views.agreement
    assert a.tasks == ["siqa", "mrpc"] and a.languages == ["qu", "sw", "it"] and a.agree == ["qu", "it"]
    assert a.within == pytest.approx((1 - 1 + 1) / 3)  # two tasks: +1 where they agree, -1 where not
    # Across languages: siqa's weight (0.7, 0.575, 0.85) against its advantage over the mean of the
    # tasks (7.5, -6.25, 10), ranks identical -> +1; mrpc's the mirror image -> +1.
    assert a.across == pytest.approx(1.0)
    assert a.within_ci[0] <= a.within <= a.within_ci[1]
    md = render_markdown(r, {})
    assert "## Which task for which language" in md and "in 2 of 3 the Fusion's largest weight" in md
    assert "not what helps" in md and "causes" not in md
    assert "| sw*        | B (mrpc)           | 70.0±7.1 | +17.5 [" in md


def test_report_writes_the_heatmap_and_the_views(tmp_path):
    folder = store(tmp_path)
    path, _ = write_report(folder, rounds=100)
    assert (path.parent / "attention_xcopa_fus.png").stat().st_size > 1000
    assert "![xcopa: attention of fus](attention_xcopa_fus.png)" in path.read_text()
    body = json.loads((path.parent / "report.json").read_text())
    views = body["task_views"]
    assert views["attention"][0]["layer_mean"]["it"] == pytest.approx([0.85, 0.15])
    assert views["rankings"]["xcopa"][1]["best"] == "B" and views["agreement"][0]["agree"] == ["qu", "it"]


def test_labels_are_shown_per_gold_label(tmp_path):
    folder = store(tmp_path, seeds=(0,))
    _, cells = __import__("adaptertx.results", fromlist=["read_store"]).read_store(folder)
    fus = next(c for c in cells if c["config"] == "fus")
    fus["cell"] = "fus|xcopa|seed0"
    fus["fusion_attention"]["languages"]["qu"]["labels"] = {
        "yes": {"tokens": 60, "mean": [[0.9, 0.1], [0.9, 0.1]]}, "no": {"tokens": 40, "mean": [[0.4, 0.6], [0.4, 0.6]]}}
    ResultsStore(folder / STORE_FILE, {"study_hash": "hash-tiny"}).add(fus)
    r = build_report(folder, rounds=50)
    assert r.views.attention[0].labels == {"qu": {"no": [0.4, 0.6], "yes": [0.9, 0.1]}}
    assert "| qu*        | yes          | 90     | 10     |" in render_markdown(r, {})


def test_views_absent_with_their_reasons(tmp_path):
    one_single = [c for c in CONFIGS if c[0] != "B"]
    r = build_report(store(tmp_path / "one", configs=one_single), rounds=50)
    assert r.views.attention and not r.views.rankings and not r.views.agreement
    md = render_markdown(r, {})
    assert "1 single-task configuration with scores (`A`): a per-language ranking" in md
    no_fusion = [c for c in CONFIGS if c[0] != "fus"]
    r = build_report(store(tmp_path / "nofus", configs=no_fusion), rounds=50)
    assert not r.views.attention and r.views.rankings
    assert "No Fusion configuration in this study" in render_markdown(r, {})
    write_report(tmp_path / "nofus", rounds=50)  # no heatmap, no crash
    r = build_report(store(tmp_path / "old", attention=None), rounds=50)  # a store written before recording
    assert "its cells hold no Fusion attention" in render_markdown(r, {})


def test_two_studies_rankings_compared(tmp_path):
    a = store(tmp_path / "a", name="first")
    counts = {k: dict(v) for k, v in COUNTS.items()}
    counts["A"]["it"], counts["B"]["it"] = (10, 10), (18, 18)  # the second study ranks it the other way
    b = store(tmp_path / "b", counts=counts, name="second")
    path, comparison = write_comparison(a, b, rounds=100)
    assert path == a / "report" / "versus-second.md"
    (summary,) = comparison.summary
    assert summary["languages"] == 3 and summary["same"] == 2 and summary["rho"] == pytest.approx(1 / 3)
    text = path.read_text()
    assert "| xcopa    | it         | siqa            | mrpc             | -1.00 |" in text
    assert json.loads((a / "report" / "versus-second.json").read_text())["tasks"] == ["mrpc", "siqa"]

    from adaptertx.cli import main

    out = CliRunner().invoke(main, ["report", str(a), str(b)])
    assert out.exit_code == 0, out.output
    assert "same best task" in out.output and "versus-second.md" in out.output
    out = CliRunner().invoke(main, ["report", str(a)])
    assert out.exit_code == 0, out.output
    assert "xcopa: best single intermediate task per language" in out.output
    assert "Observation on `xcopa`" in out.output and (a / "report" / "attention_xcopa_fus.png").is_file()
