"""A study's plan: the graph's schedule against hand computations, each node's tokens against the
tokenizer, and `adaptertx experiment --plan` running nothing."""

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptertx import data
from adaptertx.cli import main
from adaptertx.experiment import load_study
from adaptertx.models import load_tokenizer
from adaptertx.plan import flop_rate, plan_lines, plan_study, would_fail
from adaptertx.results import STORE_FILE, ResultsStore
from adaptertx.study_graph import Node, critical_path, makespan
from adaptertx.training.data import subset

STUDY = """
[study]
name = "planned"
model = "{model}"
quant = "none"
seeds = [0, 1]

[intermediate]
epochs = 2
batch_size = 4
lr = 1e-2
max_length = 32
max_examples = 8

[[configs]]
name = "none"
method = "none"

[[configs]]
name = "mrpc"
method = "single"
tasks = ["mrpc"]

[[configs]]
name = "multitask"
method = "multitask"
tasks = ["mrpc", "siqa"]

[targets]
tasks = ["xcopa", "tatoeba"]
epochs = 3
batch_size = 4
lr = 1e-2
max_length = 32
max_examples = 8
max_eval_examples = 6

[targets.languages]
xcopa = ["sw", "qu"]
tatoeba = ["de"]
"""


def graph(spec: dict[str, tuple[float, tuple[str, ...]]]):
    nodes = [Node("cell", k, deps) for k, (_, deps) in spec.items()]
    return nodes, {f"cell:{k}": s for k, (s, _) in spec.items()}


def test_the_schedule_of_small_graphs_by_hand():
    chain, s = graph({"a": (1, ()), "b": (2, ("cell:a",)), "c": (3, ("cell:b",))})
    assert critical_path(chain, s) == 6 and makespan(chain, s, 1) == 6 and makespan(chain, s, 8) == 6
    four, s = graph({k: (1, ()) for k in "abcd"})
    assert [makespan(four, s, w) for w in (1, 2, 3, 8)] == [4, 2, 2, 1]
    diamond, s = graph({"a": (1, ()), "b": (2, ("cell:a",)), "c": (3, ("cell:a",)), "d": (1, ("cell:b", "cell:c"))})
    assert critical_path(diamond, s) == 5 and makespan(diamond, s, 1) == 7 and makespan(diamond, s, 2) == 5
    # the longest chain goes first: c -> d (5 s) starts at once beside a; in list order a and b
    # would take both workers first and the chain would end at 7
    mixed, s = graph({"a": (2, ()), "b": (2, ()), "c": (1, ()), "d": (4, ("cell:c",))})
    assert makespan(mixed, s, 2) == 5
    with pytest.raises(ValueError, match="at least 1"):
        makespan(mixed, s, 0)
    assert makespan([], {}, 4) == 0 and critical_path([], {}) == 0


def test_the_schedule_of_random_graphs_keeps_the_bounds():
    rng = random.Random(7)
    for _ in range(50):
        spec = {}
        for i in range(rng.randint(1, 40)):
            deps = tuple(f"cell:{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3))))
            spec[str(i)] = (rng.uniform(0.1, 10), deps)
        nodes, s = graph(spec)
        total, cp = sum(s.values()), critical_path(nodes, s)
        for w in (1, 2, 5, 64):
            m = makespan(nodes, s, w)
            # no schedule beats the critical path or the work per worker; a list schedule is within Graham's bound
            assert max(cp, total / w) - 1e-9 <= m <= total / w + cp * (1 - 1 / w) + 1e-9
        assert makespan(nodes, s, 1) == pytest.approx(total)


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("plan")
    (root / "study.toml").write_text(STUDY.format(model=tiny_xlmr_dir))
    return load_study(root / "study.toml")


@pytest.fixture(scope="module")
def plan(study):
    return plan_study(study)


def _mean_tokens(tokenizer, texts) -> float:
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=32)["input_ids"]) / len(texts)


def test_the_plan_counts_each_nodes_tokens_as_the_tokenizer_does(study, plan, tiny_xlmr_dir):
    tok = load_tokenizer(tiny_xlmr_dir)
    keys = [n.key for n in plan.nodes]
    assert keys.count("intermediate:mrpc") == 1 and "merge:multitask" in keys and len(plan.works) == len(keys)
    assert sum(k.startswith("cell:") for k in keys) == 3 * 2 * 2
    # MRPC: 8 examples x 2 epochs x the mean length of a text pair
    sample = subset(data.load("mrpc", "en", "train"), 256)
    pair = sum(len(tok(r["text_a"], r["text_b"], truncation=True, max_length=32)["input_ids"]) for r in sample)
    mrpc = plan.works["intermediate:mrpc"]
    assert (mrpc.rows, mrpc.source) == (8, "bundled")
    assert mrpc.train_tokens == round(8 * 2 * pair / len(sample))
    # and encodes 8 validation rows after each of its 2 epochs, then 8 test rows once
    assert "test" in data.available("mrpc")["mrpc"]["en"]
    assert mrpc.encode_tokens == round((8 * 2 + 8) * pair / len(sample))
    # the multitask merge trains one epoch-budget on both tasks' rows
    mix = plan.works["merge:multitask"]
    assert mix.train_tokens == mrpc.train_tokens + plan.works["intermediate:siqa"].train_tokens and mix.rows == 16
    # Tatoeba: 6 pairs of German, both sides encoded, nothing trained
    pairs = subset(data.load("tatoeba", "de", "test"), 256)
    both = _mean_tokens(tok, [r["source"] for r in pairs]) + _mean_tokens(tok, [r["target"] for r in pairs])
    tatoeba = plan.works["cell:mrpc|tatoeba|seed1"]
    assert tatoeba.train_tokens == 0 and tatoeba.encode_tokens == round(6 * both)
    # XCOPA: 2 languages x 6 items, each of its 2 choices a sequence
    xcopa = plan.works["cell:none|xcopa|seed0"]
    assert xcopa.rows == 8 and xcopa.source == "copa (bundled)" and xcopa.lengths_measured
    assert xcopa.encode_tokens > 2 * 6 * 2 * 5  # two choices of at least a few tokens each
    r = plan.rate
    assert r.measured and r.train > 0 and r.encode > 0 and r.load > 0 and "measured on cpu" in r.how
    for w in plan.works.values():
        assert w.seconds == pytest.approx(r.load * (w.train_tokens + w.encode_tokens > 0)
                                          + w.train_tokens * r.train + w.encode_tokens * r.encode)
    assert plan.wall_hours(1) == pytest.approx(plan.gpu_hours)
    assert plan.critical_path_hours() <= plan.wall_hours(4) <= plan.wall_hours(2) <= plan.wall_hours(1)
    assert would_fail(plan) == {}


def test_the_flop_model_counts_twice_a_forward_pass_for_training(study):
    rate = flop_rate(study, 100.0)  # tiny XLM-R: 2 layers of 32
    forward = 2 * 12 * 2 * 32 ** 2 + 4 * 2 * 32 * 32
    assert rate.encode == pytest.approx(forward / 1e14) and rate.train == pytest.approx(2 * rate.encode)
    assert not rate.measured and "assumed, not measured" in rate.how


def test_recorded_cells_are_left_out(study, tmp_path):
    store = ResultsStore(tmp_path / STORE_FILE, {"study": study.name, "study_hash": study.study_hash()})
    for cell in ("none|xcopa|seed0", "mrpc|tatoeba|seed1"):
        store.add({"cell": cell, "status": "finished"})
    store.add({"cell": "mrpc|xcopa|seed0", "status": "failed", "error": "x"})  # runs again
    plan = plan_study(study, tmp_path, tflops=100.0)
    cells = {n.name for n in plan.nodes if n.kind == "cell"}
    assert plan.recorded == 2 and len(cells) == 10 and "mrpc|xcopa|seed0" in cells
    assert "none|xcopa|seed0" not in cells
    assert "(2 already recorded, 10 to run)" in plan_lines(plan)[0]


def test_cli_plan_prints_the_table_and_runs_nothing(study, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(model=study.model))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["experiment", str(config), "--out", str(out), "--plan", "--tflops", "50",
                                       "--gpus", "1,3"])
    assert result.exit_code == 0, result.output
    assert "12 cells (0 already recorded, 12 to run)" in result.output
    assert "FLOP model at 50 TFLOPS" in result.output and "cells of tatoeba" in result.output
    lines = result.output.splitlines()
    wall = lines.index(next(x for x in lines if x.startswith("GPUs")))
    assert [x.split()[0] for x in lines[wall + 2:wall + 4]] == ["1", "3"]
    assert not out.exists()
    bad = CliRunner().invoke(main, ["experiment", str(config), "--plan", "--gpus", "0,8"])
    assert bad.exit_code == 2 and "expected positive whole numbers" in bad.output


def test_the_paper_study_plans_offline_and_says_what_is_missing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_study(load_study(Path(__file__).resolve().parent.parent / "configs" / "paper-gpu.toml"), tflops=200.0)
    text = "\n".join(plan_lines(plan))
    assert "the Hub (nyu-mll/glue) is unreachable here" in text and "CCGbank is LDC-licensed" in text
    assert "Mewsli-X is built by XTREME-R's download script" in text
    cells = [n for n in plan.nodes if n.kind == "cell"]
    assert len(cells) == 16 * 12 * 3
    failing = would_fail(plan)
    assert "cell:mnli|xnli|seed0" in failing and "cell:anli|xnli|seed0" not in failing
    assert "cell:multitask|xnli|seed0" in failing  # through its merge, which needs MNLI
    assert plan.critical_path_hours() <= plan.wall_hours(32) <= plan.wall_hours(8) <= plan.wall_hours(1)
