import json
import logging
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from adaptertx.errors import AdaptertxError
from adaptertx.merging import MergeOptions, merge
from adaptertx.merging.strategies import (
    average_state,
    initial_adapter_state,
    normalise_weights,
    task_arithmetic_state,
    ties_state,
)
from adaptertx.rundir import load_run
from adaptertx.settings import FUSION
from adaptertx.training import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_xlmr_dir):
    """Two finished tiny runs (mrpc, copa) on one base with one adapter seed."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for task in ("mrpc", "copa"):
        cfg = TrainConfig(task=task, model=tiny_xlmr_dir, out=str(root / task), epochs=1, batch_size=4,
                          max_examples=16, max_length=48, max_steps=2, lr=1e-2, quant="none")
        train(cfg, progress=False)
        out[task] = root / task
    return out


def edited_copy(src, dest, run=None, adapter_config=None):
    """A copy of a run folder with run.json / adapter_config.json fields changed."""
    shutil.copytree(src, dest)
    if run:
        body = json.loads((dest / "run.json").read_text())
        for key, value in run.items():
            if key.startswith("config."):
                body["config"][key[len("config."):]] = value
            else:
                body[key] = value
        (dest / "run.json").write_text(json.dumps(body))
    if adapter_config:
        body = json.loads((dest / "adapter" / "adapter_config.json").read_text())
        body["config"].update(adapter_config)
        (dest / "adapter" / "adapter_config.json").write_text(json.dumps(body))
    return dest


def tensors(folder, name="adapter.safetensors"):
    return load_file(str(folder / name))


def test_average_of_one_is_itself(runs, tmp_path):
    result = merge("average", [runs["mrpc"]], tmp_path / "one")
    for f in ("adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"):
        assert (result.out / "adapter" / f).read_bytes() == (runs["mrpc"] / "adapter" / f).read_bytes()
    assert result.recipe["weights"] == [1.0] and "unchanged" in result.recipe["note"]
    state = tensors(runs["mrpc"] / "adapter")
    merged = average_state([state], [1.0])
    assert all(torch.equal(merged[k], v) for k, v in state.items())


def test_weights_normalise(runs, tmp_path):
    assert normalise_weights(None, 4) == [0.25] * 4
    assert normalise_weights([1, 3], 2) == [0.25, 0.75]
    a = merge("average", [runs["mrpc"], runs["copa"]], tmp_path / "a", MergeOptions(weights=[1, 3]))
    b = merge("average", [runs["mrpc"], runs["copa"]], tmp_path / "b", MergeOptions(weights=[2, 6]))
    ta, tb = tensors(a.out / "adapter"), tensors(b.out / "adapter")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a.recipe["weights"] == [0.25, 0.75] and a.recipe["weights_given"] == [1, 3]


def test_merged_output_is_the_weighted_computation_and_survives_save_load(runs, tmp_path, tiny_xlmr_dir):
    from adapters import AutoAdapterModel

    result = merge("average", [runs["mrpc"], runs["copa"]], tmp_path / "avg",
                   MergeOptions(weights=[1, 3], target="mrpc", name="avg"))
    recipe = json.loads((result.out / "recipe.json").read_text())
    assert [i["task"] for i in recipe["inputs"]] == ["mrpc", "copa"]
    assert {i["fingerprint"] for i in recipe["inputs"]} == {recipe["fingerprint"]}
    assert sorted(p.name for p in (result.out / "heads").iterdir()) == ["copa", "mrpc"]

    # The saved folder loads in plain adapters (adapter + the target's head).
    loaded = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    name = loaded.load_adapter(str(result.out / "adapter"), use_safetensors=True)
    assert name == "avg"
    loaded.set_active_adapters(name)
    loaded.eval()

    # The same computation by hand: the mrpc run's adapter and head, its tensors replaced by
    # 0.25 * mrpc + 0.75 * copa.
    manual = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    manual.load_adapter(str(runs["mrpc"] / "adapter"), use_safetensors=True)
    manual.set_active_adapters("mrpc")
    manual.eval()
    a, b = tensors(runs["mrpc"] / "adapter"), tensors(runs["copa"] / "adapter")
    params = dict(manual.named_parameters())
    with torch.no_grad():
        for key, value in a.items():
            params[key].copy_(0.25 * value + 0.75 * b[key.replace(".mrpc.", ".copa.")])
    loaded_params = dict(loaded.named_parameters())
    for key in a:
        torch.testing.assert_close(loaded_params[key.replace(".mrpc.", ".avg.")], params[key], rtol=0, atol=1e-7)
    ids = torch.tensor([[0, 3293, 83, 2, 2, 10, 3034, 2], [0, 47, 1294, 2, 2, 7, 2, 1]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, manual(input_ids=ids).logits, rtol=1e-5, atol=1e-6)

    # Each input's head is kept and loads on its own.
    loaded.load_head(str(result.out / "heads" / "copa"), load_as="copa_head", use_safetensors=True)
    head = tensors(result.out / "heads" / "copa", "model_head.safetensors")
    got = dict(loaded.named_parameters())
    assert all(torch.equal(got[k.replace("heads.copa.", "heads.copa_head.")], v) for k, v in head.items())


def test_init_is_recreated_and_task_arithmetic_generalises_average(runs, tmp_path, tiny_xlmr_dir):
    from adaptertx.modeling import build_adapter_model
    from adaptertx.tasks import get_task

    inp = load_run(runs["copa"])
    init = initial_adapter_state(inp, "x")
    built = build_adapter_model(tiny_xlmr_dir, get_task("copa"), quant="int8", adapter_seed=inp.adapter_seed)
    fresh = {k.replace(".copa.", ".x."): p for k, p in built.model.named_parameters() if ".adapters." in k}
    assert init.keys() == fresh.keys() and all(torch.equal(init[k], fresh[k]) for k in init)

    states = [{k: torch.randn(5, 3)} for k in ["w"] for _ in range(3)]
    base = {"w": torch.randn(5, 3)}
    avg = average_state(states, [0.2, 0.3, 0.5])
    ta = task_arithmetic_state(base, states, [0.2, 0.3, 0.5], scale=1 / 3)
    torch.testing.assert_close(ta["w"], avg["w"])

    merged = merge("task_arithmetic", [runs["mrpc"], runs["copa"]], tmp_path / "ta", MergeOptions(scale=0.5))
    ref = merge("average", [runs["mrpc"], runs["copa"]], tmp_path / "av")
    ma, mb = tensors(merged.out / "adapter"), tensors(ref.out / "adapter")
    assert all(torch.allclose(ma[k.replace("average_", "task_arithmetic_")], v, atol=1e-6)
               for k, v in mb.items())


def test_ties_trims_elects_and_averages_the_agreeing():
    init = {"w": torch.zeros(6)}
    a = {"w": torch.tensor([3.0, -1.0, 0.5, 2.0, 0.0, -4.0])}
    b = {"w": torch.tensor([1.0, 2.0, -0.2, -3.0, 0.1, -2.0])}
    # density 0.5 keeps the 3 largest magnitudes: a -> [3, 0, 0, 2, 0, -4]; b -> [0, 2, 0, -3, 0, -2].
    # Elected signs of the sum [3, 2, 0, -1, 0, -6]: +, +, 0, -, 0, -.
    out = ties_state(init, [a, b], [0.5, 0.5], density=0.5, scale=1.0)
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 2.0, 0.0, -3.0, 0.0, -3.0]))
    same = ties_state(init, [a, a], [0.5, 0.5], density=1.0, scale=1.0)
    torch.testing.assert_close(same["w"], a["w"])


def test_ties_merges_runs(runs, tmp_path):
    result = merge("ties", [runs["mrpc"], runs["copa"]], tmp_path / "ties", MergeOptions(density=0.3))
    assert result.recipe["method"] == "ties" and result.recipe["density"] == 0.3
    assert (result.out / "adapter" / "adapter.safetensors").is_file()


def test_different_seeds_warn_for_average_and_refuse_ties(runs, tmp_path, caplog):
    other = edited_copy(runs["copa"], tmp_path / "copa_seed7", run={"config.adapter_seed": 7})
    with caplog.at_level(logging.WARNING, logger="adaptertx.merging.weight_space"):
        result = merge("average", [runs["mrpc"], other], tmp_path / "avg")
    assert "different initialisations" in caplog.text and result.recipe["warnings"]
    with pytest.raises(AdaptertxError, match="needs one shared initialisation"):
        merge("ties", [runs["mrpc"], other], tmp_path / "ties")
    assert not (tmp_path / "ties").exists()


def test_bad_input_is_a_clear_error_and_nothing_is_overwritten(runs, tmp_path):
    pair = [runs["mrpc"], runs["copa"]]
    other_base = edited_copy(runs["copa"], tmp_path / "other_base", run={"fingerprint": "0123456789abcdef"})
    other_cfg = edited_copy(runs["copa"], tmp_path / "other_cfg", adapter_config={"reduction_factor": 8})
    unfinished = edited_copy(runs["copa"], tmp_path / "unfinished", run={"status": "running"})
    cases = [
        (dict(method="average", run_dirs=[runs["mrpc"], other_base]), "different base models"),
        (dict(method="fusion", run_dirs=[runs["mrpc"], other_base], options=MergeOptions(target="mrpc")),
         "different base models"),
        (dict(method="average", run_dirs=[runs["mrpc"], other_cfg]), "different configs .* differ in reduction_factor"),
        (dict(method="average", run_dirs=pair, options=MergeOptions(weights=[1.0])), "1 weights for 2 adapters"),
        (dict(method="average", run_dirs=pair, options=MergeOptions(weights=[1, 2, 3])), "3 weights for 2 adapters"),
        (dict(method="average", run_dirs=pair, options=MergeOptions(weights=[1, -1])), "sum to a positive number"),
        (dict(method="average", run_dirs=pair, options=MergeOptions(weights=[-1, -2])), "sum to a positive number"),
        (dict(method="average", run_dirs=[runs["mrpc"]], options=MergeOptions(weights=[0])), "sum to a positive"),
        (dict(method="average", run_dirs=[]), "nothing to merge"),
        (dict(method="average", run_dirs=[runs["mrpc"], unfinished]), "is not finished"),
        (dict(method="average", run_dirs=[runs["mrpc"], tmp_path]), "has no run.json"),
        (dict(method="fusion", run_dirs=pair), "needs --target"),
        (dict(method="fusion", run_dirs=pair, options=MergeOptions(target="mrpc", weights=[1, 1])),
         "--weights applies"),
        (dict(method="average", run_dirs=pair, options=MergeOptions(target="xnli")), "none of the inputs' tasks"),
        (dict(method="ties", run_dirs=pair, options=MergeOptions(density=0)), "density"),
        (dict(method="nosuch", run_dirs=pair), "unknown merge method 'nosuch'"),
    ]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    for kwargs, message in cases:
        with pytest.raises(AdaptertxError, match=message):
            merge(out=tmp_path / "merged", **kwargs)
        assert not (tmp_path / "merged").exists(), message
    for method in ("average", "ties", "fusion"):
        with pytest.raises(AdaptertxError, match="exists and is not empty"):
            merge(method, pair, existing,
                  MergeOptions(target="mrpc" if method == "fusion" else None,
                               settings=FUSION.replace(max_steps=1) if method == "fusion" else None))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"


def test_fusion_dataset_without_labels_is_refused(runs, tmp_path, monkeypatch):
    from adaptertx import data

    load = data.load

    def unlabelled(*args, **kwargs):
        return [{k: v for k, v in row.items() if k != "label"} for row in load(*args, **kwargs)]

    monkeypatch.setattr(data, "load", unlabelled)
    with pytest.raises(AdaptertxError, match=r"fusion dataset \(mrpc, English training split\) has no labels"):
        merge("fusion", [runs["mrpc"], runs["copa"]], tmp_path / "fusion", MergeOptions(target="mrpc"))
    assert not (tmp_path / "fusion").exists()


def test_fusion_trains_saves_a_standard_setup_and_fused_inference_matches(runs, tmp_path, tiny_xlmr_dir):
    from adapters import AutoAdapterModel
    from adapters.composition import Fuse

    from adaptertx.fused_fusion import enable_fused_fusion

    opts = MergeOptions(target="mrpc", progress=False,
                        settings=FUSION.replace(max_steps=2, max_examples=16, batch_size=4, max_length=48, lr=1e-2))
    result = merge("fusion", [runs["mrpc"], runs["copa"]], tmp_path / "fusion", opts)
    run = json.loads((result.out / "run.json").read_text())
    assert run["status"] == "finished" and run["fusion"]["adapters"] == ["mrpc", "copa"]
    recipe = json.loads((result.out / "recipe.json").read_text())
    assert recipe["method"] == "fusion" and recipe["target"] == "mrpc" and "accuracy" in recipe["validation"]
    files = {p.relative_to(result.out / "adapter").as_posix() for p in (result.out / "adapter").rglob("*")
             if p.is_file()}
    assert "mrpc,copa/model_adapter_fusion.safetensors" in files and "fusion_mrpc/model_head.safetensors" in files
    assert not any(f.endswith(".bin") for f in files)

    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    model.load_adapter_setup(str(result.out / "adapter"), use_safetensors=True)
    model.eval()
    saved = tensors(result.out / "adapter" / "mrpc,copa", "model_adapter_fusion.safetensors")
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in saved.items())
    # The trained fusion moved away from its initialisation.
    assert any(not torch.allclose(v, torch.eye(v.shape[0]), atol=1e-5) for k, v in saved.items()
               if k.endswith("value.weight"))
    ids = torch.tensor([[0, 3293, 83, 2, 2, 10, 3034, 2], [0, 47, 1294, 2, 2, 7, 2, 1]])
    mask = torch.tensor([[1] * 8, [1] * 7 + [0]])
    with torch.no_grad():
        library = model(input_ids=ids, attention_mask=mask).logits
        with enable_fused_fusion(model, Fuse("mrpc", "copa")) as fused:
            assert fused.layers == 2
            ours = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, library, rtol=1e-5, atol=1e-5)

    with pytest.raises(AdaptertxError, match="already holds a merged model; pass --overwrite"):
        merge("fusion", [runs["mrpc"], runs["copa"]], tmp_path / "fusion", opts)


def test_fusion_on_the_task_mixture_round_trips(runs, tmp_path, tiny_xlmr_dir):
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    from adaptertx.evaluation import load_intermediate
    from adaptertx.modeling import BuiltModel
    from adaptertx.tasks import get_task
    from adaptertx.training.data import encode, english_splits
    from adaptertx.training.scoring import score_features

    train_kw = dict(max_steps=3, max_examples=16, batch_size=4, max_length=48, lr=1e-2, epochs=1)
    opts = MergeOptions(target="mixture", progress=False, settings=FUSION.replace(**train_kw))
    result = merge("fusion", [runs["mrpc"], runs["copa"]], tmp_path / "mix", opts)
    recipe = json.loads((result.out / "recipe.json").read_text())
    assert recipe["method"] == "fusion" and recipe["target"] == "mixture" and recipe["tasks"] == ["mrpc", "copa"]
    assert [i["task"] for i in recipe["inputs"]] == ["mrpc", "copa"] and recipe["adapters"] == ["mrpc", "copa"]
    assert set(recipe["validation"]) == {"mrpc", "copa"} and recipe["heads"] == {"mrpc": "heads/mrpc",
                                                                                 "copa": "heads/copa"}
    files = {p.relative_to(result.out).as_posix() for p in result.out.rglob("*.safetensors")}
    assert "adapter/mrpc,copa/model_adapter_fusion.safetensors" in files
    assert {"heads/mrpc/model_head.safetensors", "heads/copa/model_head.safetensors"} <= files
    # Each adapter folder carries its task's head as trained under the Fusion (= heads/<task>/).
    for name in ("mrpc", "copa"):
        assert tensors(result.out / "adapter" / name, "model_head.safetensors").keys() == \
            tensors(result.out / "heads" / name, "model_head.safetensors").keys()
        assert all(torch.equal(v, tensors(result.out / "heads" / name, "model_head.safetensors")[k])
                   for k, v in tensors(result.out / "adapter" / name, "model_head.safetensors").items())

    # Reloaded with plain `adapters`, each head reproduces its recorded validation score.
    model = AutoAdapterModel.from_pretrained(tiny_xlmr_dir)
    model.load_adapter_setup(str(result.out / "adapter"), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_xlmr_dir)
    model.eval()
    for name in ("mrpc", "copa"):
        model.load_head(str(result.out / "heads" / name), load_as=name, use_safetensors=True)
        model.active_head = name
        task = get_task(name)
        rows = english_splits(task, 16)[1]
        built = BuiltModel(model, tokenizer, name, "", autocast=False)
        scores = score_features(built, task, encode(task, rows, tokenizer, 48, "validation"), rows)
        assert scores["accuracy"] == pytest.approx(recipe["validation"][name]["accuracy"])
    # The frozen task adapters are the runs' own; evaluation starts the Fusion from these weights.
    saved = tensors(result.out / "adapter" / "mrpc", "adapter.safetensors")
    assert all(torch.equal(v, tensors(runs["mrpc"] / "adapter")[k]) for k, v in saved.items())
    inter = load_intermediate(result.out)
    assert inter.method == "fusion" and inter.tasks == ("mrpc", "copa") and inter.fusion_dir == result.out / "adapter"

    with pytest.raises(AdaptertxError, match="takes one run per task; mrpc is given twice"):
        merge("fusion", [runs["mrpc"], runs["mrpc"]], tmp_path / "twice", opts)
    headless = edited_copy(runs["copa"], tmp_path / "headless")
    (headless / "adapter" / "model_head.safetensors").unlink()
    with pytest.raises(AdaptertxError, match=r"the copa run in .*headless saved no head; a Fusion on the task mixture"):
        merge("fusion", [runs["mrpc"], headless], tmp_path / "no_head", opts)
    # The runs' fingerprint names another base than the one given: refused before training.
    other = edited_copy(runs["copa"], tmp_path / "other", run={"fingerprint": "0" * 16})
    mrpc_other = edited_copy(runs["mrpc"], tmp_path / "mrpc_other", run={"fingerprint": "0" * 16})
    with pytest.raises(AdaptertxError, match="is not the base the adapters were trained on"):
        merge("fusion", [mrpc_other, other], tmp_path / "other_base", opts)
    assert not (tmp_path / "no_head").exists()


def test_cli_merge(runs, tmp_path):
    from adaptertx.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["merge", "--method", "average", str(runs["mrpc"]), str(runs["copa"]),
                              "--out", str(tmp_path / "m"), "--weights", "3,1"])
    assert ok.exit_code == 0, ok.output
    assert "weights: mrpc 0.750, copa 0.250" in ok.output
    again = runner.invoke(main, ["merge", str(runs["mrpc"]), str(runs["copa"]), "--out", str(tmp_path / "m")])
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    bad = runner.invoke(main, ["merge", str(runs["mrpc"]), "--out", str(tmp_path / "x"), "--weights", "a,b"])
    assert bad.exit_code == 2 and "comma-separated numbers" in bad.output
    one = runner.invoke(main, ["merge", "--method", "multitask", str(runs["mrpc"]), "--out", str(tmp_path / "y")])
    assert one.exit_code == 0 and "1 adapter(s)" in one.output  # a single input is returned unchanged
