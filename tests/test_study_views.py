"""A tiny study with a Fusion, end to end: the cells record the Fusion's attention and the
report shows the heatmap, the per-language ranking and their agreement."""

import json

import pytest

from adaptertx.experiment import load_study, run_study
from adaptertx.report import build_report, write_report
from adaptertx.results import STORE_FILE, read_store

STUDY = """
[study]
name = "tiny-views"
model = "{model}"
quant = "none"
seeds = [0]

[intermediate]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 48
max_examples = 12

[[configs]]
name = "none"
method = "none"

[[configs]]
name = "mrpc"
method = "single"
tasks = ["mrpc"]

[[configs]]
name = "siqa"
method = "single"
tasks = ["siqa"]

[[configs]]
name = "fusion"
method = "fusion"
tasks = ["mrpc", "siqa"]

[targets]
tasks = ["xnli"]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 48
max_examples = 12
max_eval_examples = 8

[targets.languages]
xnli = ["sw", "ur", "de"]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("views")
    config = root / "study.toml"
    config.write_text(STUDY.format(model=tiny_xlmr_dir))
    run_study(load_study(config), root / "out", progress=False, echo=lambda *_: None)
    return root / "out"


def test_the_fusion_cell_records_attention_per_language_and_gold_label(study):
    _, cells = read_store(study)
    by_config = {c["config"]: c for c in cells}
    assert all(c["status"] == "finished" for c in cells)
    attention = by_config["fusion"]["fusion_attention"]
    assert attention["adapters"] == ["mrpc", "siqa"] and len(attention["layers"]) == 2
    for lang in ("sw", "ur", "de"):
        entry = attention["languages"][lang]
        assert entry["tokens"] > 0 and len(entry["mean"]) == 2
        assert set(entry["labels"]) <= {"entailment", "neutral", "contradiction"}
        assert sum(e["tokens"] for e in entry["labels"].values()) == entry["tokens"]
    assert all("fusion_attention" not in c for k, c in by_config.items() if k != "fusion")


def test_the_report_shows_the_views(study, tmp_path):
    # At 12 English examples the tiny model's target adapters do not beat their majority floor,
    # and cells that did not learn are left out of every view: the report says so.
    report = build_report(study, rounds=50)
    assert report.views.attention == [] or all(c["learned"]["learned"] for c in report.cells)
    # Mark them as learned (a copy of the store) to see every view drawn from these cells.
    header, cells = read_store(study)
    lines = [json.dumps(header)] + [json.dumps({**c, "learned": {**c["learned"], "learned": True}}) for c in cells]
    (tmp_path / STORE_FILE).write_text("\n".join(lines) + "\n")
    path, report = write_report(tmp_path, rounds=50)
    text = path.read_text()
    (view,) = report.views.attention
    assert view.languages == ["sw", "ur", "de"] and set(view.labels) == {"sw", "ur", "de"}
    assert (path.parent / "attention_xnli_fusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "Attention of `fusion`" in text and "By gold label (layer mean):" in text
    assert "Best single intermediate task per language:" in text and "Observation on `xnli`" in text
    assert [r.lang for r in report.views.rankings["xnli"]] == ["sw", "ur", "de"]
