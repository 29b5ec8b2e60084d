import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from adaptertx.errors import AdaptertxError
from adaptertx.evaluation import NONE, EvalConfig, build_target_model, eval_sets, evaluate, fusion_of, load_intermediate
from adaptertx.evaluation.zero_shot import entity_types, restrict
from adaptertx.metrics import score, stats_score
from adaptertx.settings import FUSION
from adaptertx.tasks import get_task
from adaptertx.training import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_xlmr_dir):
    """Two finished tiny intermediate runs (mrpc, siqa) on one base, one adapter seed."""
    root = tmp_path_factory.mktemp("inter")
    out = {}
    for task in ("mrpc", "siqa"):
        cfg = TrainConfig(task=task, model=tiny_xlmr_dir, out=str(root / task), epochs=1, batch_size=4,
                          max_examples=12, max_length=48, max_steps=2, lr=1e-2, quant="none")
        train(cfg, progress=False)
        out[task] = root / task
    return out


def tiny(target, model, **kw):
    base = dict(quant="none", epochs=1, batch_size=4, max_examples=12, max_length=48, max_eval_examples=8, lr=1e-2)
    base.update(kw)
    return EvalConfig(target=target, model=model, **base)


def trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_protocol_trains_only_the_new_target_adapter_and_head(runs, tiny_xlmr_dir):
    from adapters.composition import Fuse, Stack

    cfg = tiny("xcopa", tiny_xlmr_dir)
    built = build_target_model(cfg, load_intermediate(runs["siqa"]), get_task("copa"))
    setup = built.model.active_adapters
    assert isinstance(setup, Stack) and setup[-1] == "target" and setup[0].startswith("inter0_siqa")
    names = trainable(built.model)
    assert names and all(".adapters.target." in n or n.startswith("heads.target.") for n in names)

    fused = build_target_model(cfg, fusion_of([runs["siqa"], runs["mrpc"]]), get_task("copa"))
    setup = fused.model.active_adapters
    assert isinstance(setup, Stack) and isinstance(setup[0], Fuse) and setup[-1] == "target"
    names = trainable(fused.model)
    assert any("adapter_fusion_layer" in n for n in names)
    assert not any(".adapters.inter" in n for n in names)

    none = build_target_model(cfg, NONE, get_task("copa"))
    assert none.model.active_adapters == Stack("target")
    # The same initialisation of the target adapter under every configuration.
    a = {n: p for n, p in built.model.named_parameters() if ".adapters.target." in n}
    b = {n: p for n, p in none.model.named_parameters() if ".adapters.target." in n}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_target_model_is_built_on_one_device(runs, tiny_xlmr_dir, monkeypatch):
    """The evaluate path on a base placed on ``meta`` (a device that is not the CPU): the loaded
    intermediate adapters, their Fusion, the new target adapter and its head all end on it."""
    from adaptertx.evaluation import zero_shot

    inter = fusion_of([runs["siqa"], runs["mrpc"]])
    monkeypatch.setattr(zero_shot, "fingerprint", lambda model: inter.fingerprint)  # meta weights have no bytes
    built = build_target_model(tiny("xcopa", tiny_xlmr_dir), inter, get_task("copa"), device=torch.device("meta"))
    names = {n for n, _ in built.model.named_parameters()}
    assert any("adapter_fusion_layer" in n for n in names) and any(".adapters.target." in n for n in names)
    assert [n for n, p in built.model.named_parameters() if p.device.type != "meta"] == []


def test_zero_shot_scores_match_plain_adapters_reload(runs, tiny_xlmr_dir, tmp_path):
    """The stored per-language score equals the metric of the saved setup, reloaded with plain
    ``adapters``, on the same test examples; the intermediate adapter stays frozen."""
    from adapters import AutoAdapterModel

    from adaptertx import data
    from adaptertx.features import decode_predictions, encode_examples
    from adaptertx.models import load_tokenizer
    from adaptertx.training.data import subset

    before = load_file(str(runs["siqa"] / "adapter" / "adapter.safetensors"))
    result = evaluate(tiny("xcopa", tiny_xlmr_dir, languages=("sw", "it")), load_intermediate(runs["siqa"]),
                      tmp_path / "cell", progress=False)
    assert set(result.languages) == {"sw", "it"} and result.primary == "accuracy"
    sw = result.languages["sw"]
    assert sw.n == 8 and sw.low_resource and not result.languages["it"].low_resource and sw.split == "test"
    assert stats_score(get_task("xcopa"), [sum(r[0] for r in sw.stats), len(sw.stats)])["accuracy"] == \
        pytest.approx(sw.scores["accuracy"], abs=1e-3)

    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    model.load_adapter_setup(str(tmp_path / "cell" / "adapter"), use_safetensors=True)
    model.eval()
    after = {k.replace("inter0_siqa", "siqa"): v for k, v in model.state_dict().items()
             if ".adapters.inter0_siqa." in k}
    assert after and all(torch.equal(after[k].cpu(), before[k]) for k in after if k in before)
    rows = subset(data.load("xcopa", "sw", "test"), 8)
    feats = encode_examples(get_task("copa"), rows, load_tokenizer(tiny_xlmr_dir), max_length=48)
    with torch.no_grad():
        logits = model(**feats.batch(range(len(rows)), labels=False)).logits
    preds = decode_predictions(get_task("copa"), feats, logits)
    assert score(get_task("xcopa"), preds, rows)["accuracy"] == pytest.approx(sw.scores["accuracy"], abs=1e-3)
    record = result.record()
    assert record["trace"]["checkpoints"][-1]["role"] == "target"
    assert any(c["role"] == "intermediate" for c in record["trace"]["checkpoints"])

    # A finished cell folder is reused (no training) and gives the same numbers.
    run_json = (tmp_path / "cell" / "run.json").read_text()
    again = evaluate(tiny("xcopa", tiny_xlmr_dir, languages=("sw", "it")), load_intermediate(runs["siqa"]),
                     tmp_path / "cell", progress=False)
    assert (tmp_path / "cell" / "run.json").read_text() == run_json
    assert again.languages["sw"].scores == sw.scores and again.languages["sw"].stats == sw.stats
    with pytest.raises(AdaptertxError, match="another configuration"):
        evaluate(tiny("xcopa", tiny_xlmr_dir, languages=("sw",)), NONE, tmp_path / "cell", progress=False)


def test_fusion_cell_scores_come_from_the_fused_path_and_match_the_library(runs, tiny_xlmr_dir, tmp_path,
                                                                            monkeypatch):
    """Under Stack(Fuse, target) the test predictions run the fused N-adapter path; the saved
    setup, reloaded with plain ``adapters`` (the library's Fusion forward), predicts the same."""
    from adapters import AutoAdapterModel

    from adaptertx import data, fused_fusion
    from adaptertx.features import decode_predictions, encode_examples
    from adaptertx.models import load_tokenizer
    from adaptertx.training.data import subset

    served = []
    original = fused_fusion.FusedFusion._forward_for

    def counting(self, layer):
        forward = original(self, layer)
        return lambda state: served.append(1) or forward(state)

    monkeypatch.setattr(fused_fusion.FusedFusion, "_forward_for", counting)
    result = evaluate(tiny("xcopa", tiny_xlmr_dir, languages=("sw",)), fusion_of([runs["siqa"], runs["mrpc"]]),
                      tmp_path / "cell", progress=False)
    assert served  # the fused path computed the Fuse layers of the test predictions

    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    model.load_adapter_setup(str(tmp_path / "cell" / "adapter"), set_active=True, use_safetensors=True)
    model.eval()
    rows = subset(data.load("xcopa", "sw", "test"), 8)
    feats = encode_examples(get_task("copa"), rows, load_tokenizer(tiny_xlmr_dir), max_length=48)
    batch = feats.batch(range(len(rows)), labels=False)
    with torch.no_grad():
        out = model(**batch, output_adapter_fusion_attentions=True)
    preds = decode_predictions(get_task("copa"), feats, out.logits)
    assert [[float(p == r["label"])] for p, r in zip(preds, rows, strict=True)] == result.languages["sw"].stats
    # The cell recorded the Fusion's attention on the fused path: the library's own attention
    # output, averaged over the real tokens (every choice of every item), gives the same weights.
    attention = result.fusion_attention
    assert attention["adapters"] == ["siqa", "mrpc"] and attention["layers"] == ["0", "1"]
    assert result.record()["fusion_attention"] == attention
    mask = batch["attention_mask"].reshape(-1, batch["attention_mask"].shape[-1]).bool()
    fusion_name = next(iter(out.adapter_fusion_attentions))
    want = [torch.as_tensor(out.adapter_fusion_attentions[fusion_name][layer]["output_adapter"])[mask].mean(0)
            for layer in (0, 1)]
    sw = attention["languages"]["sw"]
    assert sw["tokens"] == int(mask.sum()) and "labels" not in sw  # labels: classification targets only
    torch.testing.assert_close(torch.tensor(sw["mean"]), torch.stack(want).float(), atol=2e-4, rtol=0)


def test_missing_languages_are_reported_not_skipped(tiny_xlmr_dir):
    sets, missing = eval_sets(get_task("panx"), tiny("panx", tiny_xlmr_dir))
    assert set(sets) == {"af", "am", "ig", "rw", "sw", "yo"}
    assert "bn" in missing and "google/xtreme" in missing["bn"] and "--data-file" in missing["bn"]
    sets, missing = eval_sets(get_task("udpos"), tiny("udpos", tiny_xlmr_dir, languages=("mr", "de")))
    assert sets["de"][1] == "validation" and len(sets["de"][0]) == 8 and not missing


def test_own_data_file_replaces_the_bundled_language(tmp_path, tiny_xlmr_dir):
    lines = [json.dumps({"premise": f"P {i}", "choice1": "a", "choice2": "b", "question": "cause", "label": i % 2,
                         "idx": i}) for i in range(5)]
    path = tmp_path / "sw.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sets, _ = eval_sets(get_task("xcopa"), tiny("xcopa", tiny_xlmr_dir, languages=("sw",),
                                                 data_files=(("sw", str(path)),)))
    rows, split, source = sets["sw"]
    assert len(rows) == 5 and split == "file" and source == str(path)


def test_ner_types_outside_the_training_labels_count_as_o():
    keep = entity_types(get_task("masakhaner").labels) & entity_types(get_task("conll03").labels)
    assert keep == {"PER", "ORG", "LOC"}
    assert restrict(["B-DATE", "I-DATE", "B-PER", "B-MISC", "O"], keep) == ["O", "O", "B-PER", "O", "O"]


def test_retrieval_under_a_fusion_is_not_applicable(runs, tiny_xlmr_dir):
    result = evaluate(tiny("tatoeba", tiny_xlmr_dir, languages=("de",)), fusion_of([runs["siqa"], runs["mrpc"]]),
                      "unused", progress=False)
    assert not result.languages and result.missing["de"].startswith("not applicable")


def test_retrieval_under_a_trained_fusion_encodes_with_it(runs, tiny_xlmr_dir, tmp_path):
    from adaptertx.evaluation import evaluate_tatoeba
    from adaptertx.merging import MergeOptions, merge

    opts = MergeOptions(target="mixture", progress=False,
                        settings=FUSION.replace(max_steps=2, max_examples=12, batch_size=4, max_length=48, lr=1e-2,
                                                epochs=1))
    folder = merge("fusion", [runs["siqa"], runs["mrpc"]], tmp_path / "mix", opts).out
    result = evaluate(tiny("tatoeba", tiny_xlmr_dir, languages=("de",)), load_intermediate(folder), "unused",
                      progress=False)
    assert set(result.languages) == {"de"} and not result.missing
    direct = evaluate_tatoeba(tiny_xlmr_dir, ["de"], max_pairs=8, adapter=str(folder / "adapter"), progress=False)[0]
    assert result.languages["de"].stats == [[float(en_x == i), float(x_en == i)]
                                            for i, (en_x, x_en) in enumerate(direct.nearest)]
    assert any("fusion" in c["path"] for c in result.trace["checkpoints"])
    from adaptertx.retrieval import load_encoder

    model, _, name = load_encoder(tiny_xlmr_dir, folder)
    assert name == "siqa,mrpc" and str(model.adapters_config.active_setup) == "Fuse[siqa, mrpc]"


def test_tatoeba_hits_are_per_pair(runs, tiny_xlmr_dir):
    from adaptertx.evaluation import evaluate_tatoeba

    result = evaluate(tiny("tatoeba", tiny_xlmr_dir, languages=("de", "kab"), max_eval_examples=20),
                      load_intermediate(runs["mrpc"]), "unused", progress=False)
    ref = {s.lang: s for s in evaluate_tatoeba(tiny_xlmr_dir, ["de", "kab"], max_pairs=20, progress=False,
                                               adapter=str(runs["mrpc"] / "adapter"))}
    assert result.primary == "en_to_x"  # XTREME's direction, x→en beside it
    for lang in ("de", "kab"):
        r = result.languages[lang]
        assert r.n == 20 and len(r.stats) == 20
        assert r.scores == pytest.approx({"en_to_x": ref[lang].en_to_x, "x_to_en": ref[lang].x_to_en}, abs=1e-3)
        assert 100 * sum(s[0] for s in r.stats) / 20 == pytest.approx(ref[lang].en_to_x)
        assert 100 * sum(s[1] for s in r.stats) / 20 == pytest.approx(ref[lang].x_to_en)
    assert result.languages["kab"].low_resource and not result.languages["de"].low_resource
    protocol = result.record()["trace"]["protocol"]
    assert protocol["directions"] == ["en_to_x", "x_to_en"] and "evaluate_retrieval.py" in protocol["description"]
    assert protocol["prefixes"] == {"kind": "symmetric", "query": "", "candidate": ""}  # not an e5 model


def test_bad_input(runs, tiny_xlmr_dir, tmp_path):
    with pytest.raises(AdaptertxError, match="intermediate task, not a target"):
        EvalConfig("siqa")
    with pytest.raises(AdaptertxError, match="unknown task"):
        EvalConfig("nope")
    with pytest.raises(AdaptertxError, match="data file for 'sw' not found"):
        EvalConfig("xcopa", data_files=(("sw", str(tmp_path / "missing.jsonl")),))
    with pytest.raises(AdaptertxError, match="has no language 'fr'"):
        eval_sets(get_task("xcopa"), tiny("xcopa", tiny_xlmr_dir, languages=("fr",)))
    with pytest.raises(AdaptertxError, match="no such folder"):
        load_intermediate(tmp_path / "nowhere")
    with pytest.raises(AdaptertxError, match="at least two"):
        fusion_of([runs["siqa"]])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["mrpc"], unfinished)
    body = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps(dict(body, status="running")))
    with pytest.raises(AdaptertxError, match="not finished"):
        load_intermediate(unfinished)
    other = tmp_path / "other-base"
    shutil.copytree(runs["mrpc"], other)
    (other / "run.json").write_text(json.dumps(dict(body, fingerprint="0123456789abcdef")))
    with pytest.raises(AdaptertxError, match="another base"):
        build_target_model(tiny("xcopa", tiny_xlmr_dir), load_intermediate(other), get_task("copa"))


def test_cli_evaluate_with_own_files(runs, tiny_xlmr_dir, tmp_path):
    from click.testing import CliRunner

    from adaptertx.cli import main

    own = tmp_path / "own"
    own.mkdir()
    lines = [json.dumps({"premise": f"Mtu {i} alianguka.", "choice1": "Alijikwaa.", "choice2": "Alicheka.",
                         "question": "cause", "label": 0, "idx": i}) for i in range(6)]
    (own / "sw.jsonl").write_text("\n".join(lines) + "\n")
    args = ["evaluate", "xcopa", "--model", tiny_xlmr_dir, "--quant", "none", "--intermediate", str(runs["mrpc"]),
            "--epochs", "1", "--batch-size", "4", "--max-examples", "8", "--max-length", "48",
            "--out", str(tmp_path / "cell"), "--json", str(tmp_path / "cell.json")]
    result = CliRunner().invoke(main, args + ["--data-dir", str(own), "--langs", "sw"])
    assert result.exit_code == 0, result.output
    assert "sw*" in result.output and str(own / "sw.jsonl") in result.output
    record = json.loads((tmp_path / "cell.json").read_text())
    assert record["languages"]["sw"]["n"] == 6 and record["languages"]["sw"]["split"] == "file"
    bad = CliRunner().invoke(main, args + ["--data-file", "sw"])
    assert bad.exit_code == 2 and "LANG=PATH" in bad.output
    unknown = CliRunner().invoke(main, ["evaluate", "xcopa", "--intermediate", str(tmp_path / "nowhere"),
                                        "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 1 and "no such folder" in unknown.output


def _text(row):
    if "tokens" in row:
        return " ".join(row["tokens"])
    return row.get("text_a") or row.get("context") or ""


TRAINED_TARGETS = ["xnli", "xcopa", "udpos", "panx", "xquad", "mlqa", "tydiqa", "masakhaner", "pawsx"]


@pytest.mark.parametrize("target", TRAINED_TARGETS)
def test_no_training_item_or_its_translation_is_evaluated(target):
    """What a target trains and selects on (its English source's train and validation splits)
    shares no item with what it is scored on, in any language, by item id where the source is
    the same parallel dataset; and no English training text is an English test row. (UD English
    dev and test share a few sentences of their own; dev only picks the best epoch.)"""
    from adaptertx.training.data import english_splits

    task = get_task(target)
    source = get_task(task.english_train)
    train_rows, dev_rows, _ = english_splits(source, None)
    seen = train_rows + dev_rows
    langs = ("en", "de", "mr", "wo") if target == "udpos" else None
    sets, _ = eval_sets(task, EvalConfig(target, languages=langs))
    assert sets
    seen_ids = {r["id"] for r in seen}
    seen_text = {_text(r) for r in train_rows if len(_text(r).split()) >= 8}
    for lang, (rows, _, _) in sets.items():
        if source.bundled == task.bundled and task.bundled in ("xnli", "pawsx", "xquad"):  # parallel: ids are items
            assert not seen_ids & {r["id"] for r in rows}, lang
        if lang == "en":
            assert not seen_text & {_text(r) for r in rows}, lang
