"""adaptertx.hub: export to the AdapterHub layout with a model card, and push over real HTTP to a
local server speaking the Hub API (tests/hub_server.py)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from hub_server import HubServer
from safetensors.torch import load_file

from adaptertx.errors import AdaptertxError
from adaptertx.hub import MANIFEST, check_repo_id, export, push, safe_relpath
from adaptertx.languages import is_low_resource
from adaptertx.merging import MergeOptions, merge
from adaptertx.results import ResultsStore
from adaptertx.settings import FUSION
from adaptertx.training import TrainConfig, train

TOKEN = "hf_adaptertxTestToken_7Qz9Xw3Kp2"
SENTENCES = [("The cat sat on the mat all afternoon.", "A cat was sitting on the mat."),
             ("Il pleut depuis ce matin à Paris.", "Kesho kutakuwa na jua kali sana.")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_xlmr_dir):
    """Two finished tiny runs, their weighted average (mrpc head) and an AdapterFusion of them."""
    root = tmp_path_factory.mktemp("hub-sources")
    for task in ("mrpc", "copa"):
        train(TrainConfig(task=task, model=tiny_xlmr_dir, out=str(root / task), epochs=1, batch_size=4,
                          max_examples=16, max_length=48, max_steps=2, lr=1e-2, quant="none"), progress=False)
    merge("average", [root / "mrpc", root / "copa"], root / "avg", MergeOptions(weights=[1, 3], target="mrpc"))
    merge("fusion", [root / "mrpc", root / "copa"], root / "fusion",
          MergeOptions(target="mrpc", progress=False,
                       settings=FUSION.replace(max_steps=2, max_examples=16, batch_size=4, max_length=48,
                                                        lr=1e-2)))
    return {name: root / name for name in ("mrpc", "copa", "avg", "fusion")}


@pytest.fixture
def hub():
    with HubServer(TOKEN) as server:
        yield server


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def edited_copy(src: Path, dest: Path, run=None, recipe=None) -> Path:
    shutil.copytree(src, dest)
    for name, changes in (("run.json", run), ("recipe.json", recipe)):
        if changes:
            body = json.loads((dest / name).read_text())
            for key, value in changes.items():
                if key.startswith("config."):
                    body["config"][key[len("config."):]] = value
                else:
                    body[key] = value
            (dest / name).write_text(json.dumps(body))
    return dest


def plain_model(base_dir):
    """The tiny base as plain ``adapters`` loads it (no adaptertx involved)."""
    from adapters import AutoAdapterModel

    return AutoAdapterModel.from_pretrained(base_dir).eval()


def logits(model, tokenizer):
    batch = tokenizer([a for a, _ in SENTENCES], [b for _, b in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


# ------------------------------------------------------------------------------ export


def test_export_of_a_run_is_an_adapterhub_folder_with_a_card(sources, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "export"
    result = export(sources["mrpc"], "me/mrpc-adapter", out)
    got = files_of(out)
    assert set(got) == {"README.md", MANIFEST, "adapter_config.json", "adapter.safetensors", "head_config.json",
                        "model_head.safetensors", "run.json"}
    for name in ("adapter.safetensors", "model_head.safetensors", "adapter_config.json"):
        assert got[name] == (sources["mrpc"] / f"adapter/{name}").read_bytes()
    # run.json as the run wrote it, but with the local paths in it (the base folder, --out) relative
    source_run, exported_run = json.loads((sources["mrpc"] / "run.json").read_text()), json.loads(got["run.json"])
    assert exported_run["config"]["model"] == os.path.relpath(source_run["config"]["model"], sources["mrpc"])
    assert {**exported_run, "config": None} == {**source_run, "config": None}
    assert result.kind == "run" and result.method == "single_task" and result.card == "written"
    assert result.base_model is None  # a local base folder has no Hub id

    meta = front_matter(got["README.md"].decode())
    assert meta["library_name"] == "adapter-transformers"
    assert {"adapter-transformers", "adapters", "adaptertx", "xlm-roberta", "single-task"} <= set(meta["tags"])
    assert meta["language"] == ["en"] and meta["datasets"] == ["nyu-mll/glue"] and meta["license"] == "unknown"
    assert "base_model" not in meta and "model-index" not in meta
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "adapter-transformers"
    assert 'model.load_adapter("me/mrpc-adapter", set_active=True, use_safetensors=True)' in card.text

    manifest = json.loads(got[MANIFEST])
    assert manifest["source"] == str(sources["mrpc"].resolve()) and manifest["fingerprint"] == result.fingerprint
    assert manifest["files"]["adapter.safetensors"] == hashlib.sha256(got["adapter.safetensors"]).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left behind


def test_card_names_the_hub_base_of_known_models(sources, tmp_path):
    from adaptertx.models import hub_id

    assert hub_id("me5-small") == "intfloat/multilingual-e5-small"
    assert hub_id("xlm-roberta-large") == "FacebookAI/xlm-roberta-large"
    assert hub_id("my-org/my-encoder") == "my-org/my-encoder" and hub_id(str(sources["mrpc"])) is None

    for model, expected, licence in (("me5-small", "intfloat/multilingual-e5-small", "mit"),
                                     ("xlm-roberta-base", "FacebookAI/xlm-roberta-base", "mit")):
        src = edited_copy(sources["mrpc"], tmp_path / model, run={"config.model": model})
        result = export(src, "me/x", tmp_path / f"out-{model}")
        text = (result.out / "README.md").read_text()
        meta = front_matter(text)
        assert meta["base_model"] == expected and meta["base_model_relation"] == "adapter"
        assert meta["license"] == licence and result.base_model == expected
        assert f'AutoAdapterModel.from_pretrained("{expected}")' in text
        assert json.loads((result.out / "adapter_config.json").read_text())["model_name"] == expected
        assert (result.out / "adapter.safetensors").read_bytes() == (src / "adapter/adapter.safetensors").read_bytes()
    assert "4-bit (Q4_0) conversion" in (tmp_path / "out-me5-small" / "README.md").read_text()
    assert "4-bit" not in (tmp_path / "out-xlm-roberta-base" / "README.md").read_text()


def test_round_trip_run_loads_in_plain_adapters_with_identical_outputs(sources, tmp_path, tiny_xlmr_dir, tiny_xlmr):
    tokenizer = tiny_xlmr[1]
    out = export(sources["mrpc"], "me/mrpc", tmp_path / "export").out
    exported = plain_model(tiny_xlmr_dir)
    name = exported.load_adapter(str(out), set_active=True, use_safetensors=True)
    reference = plain_model(tiny_xlmr_dir)
    reference.load_adapter(str(sources["mrpc"] / "adapter"), set_active=True, use_safetensors=True)
    params = dict(exported.named_parameters())
    saved = load_file(str(sources["mrpc"] / "adapter" / "adapter.safetensors"))
    assert name == "mrpc" and all(torch.equal(params[k], v) for k, v in saved.items())
    assert torch.equal(logits(exported, tokenizer), logits(reference, tokenizer))


def test_round_trip_merge_with_every_head(sources, tmp_path, tiny_xlmr_dir, tiny_xlmr):
    tokenizer = tiny_xlmr[1]
    result = export(sources["avg"], "me/avg", tmp_path / "export")
    assert result.kind == "merge" and result.method == "average"
    assert ({"heads/mrpc/model_head.safetensors", "heads/copa/model_head.safetensors", "recipe.json"}
            <= set(result.files))
    exported = plain_model(tiny_xlmr_dir)
    name = exported.load_adapter(str(result.out), set_active=True, use_safetensors=True)
    reference = plain_model(tiny_xlmr_dir)
    reference.load_adapter(str(sources["avg"] / "adapter"), set_active=True, use_safetensors=True)
    assert torch.equal(logits(exported, tokenizer), logits(reference, tokenizer))
    exported.load_head(str(result.out / "heads" / "copa"), load_as="copa_head", use_safetensors=True)
    head = load_file(str(sources["avg"] / "heads" / "copa" / "model_head.safetensors"))
    params = dict(exported.named_parameters())
    assert name.startswith("average") and all(
        torch.equal(params[k.replace("heads.copa.", "heads.copa_head.")], v) for k, v in head.items())
    meta = front_matter((result.out / "README.md").read_text())
    assert "average" in meta["tags"] and meta["datasets"] == ["nyu-mll/glue", "aps/super_glue"]
    assert (result.out / "recipe.json").read_bytes() == (sources["avg"] / "recipe.json").read_bytes()


def test_round_trip_fusion_setup(sources, tmp_path, tiny_xlmr_dir, tiny_xlmr):
    tokenizer = tiny_xlmr[1]
    result = export(sources["fusion"], "me/fusion", tmp_path / "export")
    assert result.kind == "fusion" and "mrpc,copa/model_adapter_fusion.safetensors" in result.files
    exported = plain_model(tiny_xlmr_dir)
    exported.load_adapter_setup(str(result.out), set_active=True, use_safetensors=True)
    reference = plain_model(tiny_xlmr_dir)
    reference.load_adapter_setup(str(sources["fusion"] / "adapter"), set_active=True, use_safetensors=True)
    assert torch.equal(logits(exported, tokenizer), logits(reference, tokenizer))
    fused = load_file(str(sources["fusion"] / "adapter" / "mrpc,copa" / "model_adapter_fusion.safetensors"))
    params = dict(exported.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in fused.items())
    text = (result.out / "README.md").read_text()
    assert {"fusion", "adapterfusion"} <= set(front_matter(text)["tags"])
    assert 'load_adapter_setup("me/fusion", set_active=True, use_safetensors=True)' in text


def test_multitask_folder_without_input_runs(sources, tmp_path, tiny_xlmr_dir, tiny_xlmr):
    """A multi-task training folder (recipe.json with tasks and no input runs, run.json, adapter/, heads/)."""
    recipe = json.loads((sources["avg"] / "recipe.json").read_text())
    run = json.loads((sources["mrpc"] / "run.json").read_text())
    src = edited_copy(sources["avg"], tmp_path / "mt", recipe={
        "method": "multitask", "inputs": [], "tasks": ["mrpc", "copa"], "weights": None,
        "train": {"model": "xlm-roberta-base", "quant": "int8"}})
    (src / "run.json").write_text(json.dumps(dict(run, fingerprint=recipe["fingerprint"])))
    result = export(src, "me/mt", tmp_path / "export")
    assert result.method == "multitask" and result.base_model == "FacebookAI/xlm-roberta-base"
    assert {"heads/mrpc/model_head.safetensors", "heads/copa/model_head.safetensors"} <= set(result.files)
    text = (result.out / "README.md").read_text()
    assert "multitask" in front_matter(text)["tags"] and "int8 (adaptertx, bf16 compute)" in text
    exported = plain_model(tiny_xlmr_dir)
    exported.load_adapter(str(result.out), set_active=True, use_safetensors=True)
    reference = plain_model(tiny_xlmr_dir)
    reference.load_adapter(str(src / "adapter"), set_active=True, use_safetensors=True)
    assert torch.equal(logits(exported, tiny_xlmr[1]), logits(reference, tiny_xlmr[1]))

    (src / "run.json").write_text(json.dumps(dict(run, fingerprint="0123456789abcdef")))
    with pytest.raises(AdaptertxError, match="fingerprint mismatch in .* the multitask was trained on 0123"):
        export(src, "me/mt", tmp_path / "export2")
    (src / "run.json").write_text(json.dumps(dict(run, status="running", fingerprint=recipe["fingerprint"])))
    with pytest.raises(AdaptertxError, match="multitask training in .* is not finished"):
        export(src, "me/mt", tmp_path / "export2")
    assert not (tmp_path / "export2").exists()


# ------------------------------------------------------------------------------ evaluation table


def _cell(cid, target, folder, seed, scores, fingerprint, status="finished"):
    return {"cell": cid, "config": "avg", "method": "average", "target": target, "seed": seed, "status": status,
            "intermediate": {"tasks": ["mrpc", "copa"], "dir": str(folder)}, "metric": "accuracy",
            "primary": "accuracy",
            "languages": {lang: {"scores": {"accuracy": v}, "n": 100, "low_resource": is_low_resource(lang),
                                 "split": "test", "source": "bundled"} for lang, v in scores.items()},
            "missing": {}, "trace": {"model": "tiny", "fingerprint": fingerprint, "checkpoints": [], "versions": {},
                                     "seconds": 1.0}}


def _study(folder: Path, cells: list[dict]) -> Path:
    store = ResultsStore(folder / "results.jsonl", {"study": "demo", "study_hash": "h1", "config": {}})
    for cell in cells:
        store.add(cell)
    return folder


def test_card_evaluation_table_from_the_results_store(sources, tmp_path):
    src = sources["avg"]
    fp = json.loads((src / "recipe.json").read_text())["fingerprint"]
    study = _study(tmp_path / "study", [
        _cell("avg|xcopa|seed0", "xcopa", src, 0, {"sw": 50.0, "it": 60.0, "qu": 52.0}, fp),
        _cell("avg|xcopa|seed1", "xcopa", f"{src}/.", 1, {"sw": 54.0, "it": 62.0, "qu": 50.0}, fp),
        _cell("avg|xnli|seed0", "xnli", src, 0, {"sw": 40.0, "de": 45.0}, fp),
        _cell("avg|xnli|seed1", "xnli", src, 1, {"sw": 99.0}, fp, status="failed"),
        _cell("other|xcopa|seed0", "xcopa", sources["mrpc"], 0, {"sw": 10.0}, "0000000000000000"),
    ])
    result = export(src, "me/avg", tmp_path / "export", results=study)
    text = (result.out / "README.md").read_text()
    for row in ("| xcopa | it | accuracy | 61.0 | 2 |", "| xcopa | qu * | accuracy | 51.0 | 2 |",
                "| xcopa | sw * | accuracy | 52.0 | 2 |", "| xnli | de | accuracy | 45.0 | 1 |",
                "| xnli | sw * | accuracy | 40.0 | 1 |",
                "| xcopa | 51.5 | 61.0 | 54.7 |", "| xnli | 40.0 | 45.0 | 42.5 |"):
        assert row in text, row
    assert "99.0" not in text and "10.0 |" not in text and len(result.evaluation) == 5
    meta = front_matter(text)
    assert meta["language"] == ["en", "de", "it", "qu", "sw"]
    assert {"cambridgeltl/xcopa", "facebook/xnli", "nyu-mll/glue", "aps/super_glue"} == set(meta["datasets"])
    # The store file works as well as its folder.
    again = export(src, "me/avg", tmp_path / "export2", results=study / "results.jsonl")
    assert again.evaluation == result.evaluation


def test_results_of_another_base_or_folder_are_refused(sources, tmp_path):
    src = sources["avg"]
    fp = json.loads((src / "recipe.json").read_text())["fingerprint"]
    mixed = _study(tmp_path / "mixed", [_cell("a|xcopa|seed0", "xcopa", src, 0, {"sw": 50.0}, fp),
                                        _cell("a|xcopa|seed1", "xcopa", src, 1, {"sw": 51.0}, "0123456789abcdef")])
    with pytest.raises(AdaptertxError,
                       match=r"fingerprint mismatch: results cells a\|xcopa\|seed1 \(0123456789abcdef\)"):
        export(src, "me/avg", tmp_path / "export", results=mixed)
    others = _study(tmp_path / "others", [_cell("b|xcopa|seed0", "xcopa", sources["mrpc"], 0, {"sw": 5.0}, fp)])
    with pytest.raises(AdaptertxError, match="holds no finished cells for"):
        export(src, "me/avg", tmp_path / "export", results=others)
    with pytest.raises(AdaptertxError, match="no results store"):
        export(src, "me/avg", tmp_path / "export", results=tmp_path / "nowhere")
    assert not (tmp_path / "export").exists()


def test_an_existing_card_is_kept_unless_overwritten(sources, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    mine = "---\nlicense: cc-by-4.0\nlibrary_name: adapter-transformers\n---\n# My own words\n"
    (out / "README.md").write_text(mine)
    assert export(sources["mrpc"], "me/x", out).card == "kept"
    assert (out / "README.md").read_text() == mine and (out / "adapter.safetensors").is_file()
    again = export(sources["copa"], "me/x", out)  # an earlier export is replaced as a whole, the card kept
    assert again.card == "kept" and (out / "README.md").read_text() == mine
    assert json.loads((out / MANIFEST).read_text())["source"] == str(sources["copa"].resolve())
    fresh = export(sources["copa"], "me/x", out, overwrite_card=True)
    assert fresh.card == "written" and front_matter((out / "README.md").read_text())["datasets"] == ["aps/super_glue"]

    (out / "README.md").write_text("---\nlicense: [unclosed\n---\n# broken\n")
    before = files_of(out)
    with pytest.raises(AdaptertxError, match="front matter is not valid.*--overwrite-card"):
        export(sources["mrpc"], "me/x", out)
    assert files_of(out) == before


# ------------------------------------------------------------------------------ bad input


def test_safe_relpath_and_repo_ids():
    assert safe_relpath("mrpc,copa/model_adapter_fusion.safetensors") == "mrpc,copa/model_adapter_fusion.safetensors"
    for name in ("../x", "/etc/passwd", "heads/../../x", "a\\b", "C:/x", "a\nb", "", "a//b", "./a"):
        with pytest.raises(AdaptertxError, match="refusing the file name"):
            safe_relpath(name)
    assert check_repo_id("me/my-adapter.v2") == "me/my-adapter.v2"
    for bad, message in (("noslash", "OWNER/NAME"), ("a/b/c", "OWNER/NAME"), ("me/bad..name", "not valid on the Hub"),
                         ("me/-x", "not valid on the Hub"), ("me/x y", "not valid on the Hub"), ("/x", "not valid")):
        with pytest.raises(AdaptertxError, match=message):
            check_repo_id(bad)


def test_bad_sources_are_refused_and_nothing_is_written(sources, tmp_path):
    outside = tmp_path / "secret.safetensors"
    shutil.copyfile(sources["mrpc"] / "adapter" / "adapter.safetensors", outside)
    cases = {}
    cases["not finished"] = edited_copy(sources["mrpc"], tmp_path / "unfinished", run={"status": "running"})
    missing = edited_copy(sources["mrpc"], tmp_path / "missing")
    (missing / "adapter" / "adapter.safetensors").unlink()
    cases["lacks adapter.safetensors"] = missing
    (tmp_path / "plain").mkdir()
    cases["neither a training run folder"] = tmp_path / "plain"
    cases["is not a folder"] = tmp_path / "nosuch"
    pickled = edited_copy(sources["mrpc"], tmp_path / "pickled")
    (pickled / "adapter" / "pytorch_adapter.bin").write_bytes(b"\x80\x04not really a pickle")
    cases["pickled weights"] = pickled
    damaged = edited_copy(sources["mrpc"], tmp_path / "damaged")
    path = damaged / "adapter" / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    cases["not a valid safetensors file"] = damaged
    linked = edited_copy(sources["mrpc"], tmp_path / "linked")
    (linked / "adapter" / "adapter.safetensors").unlink()
    (linked / "adapter" / "adapter.safetensors").symlink_to(outside)
    cases["outside the source folder"] = linked
    cases["refusing the file name '../mrpc/adapter'"] = edited_copy(
        sources["avg"], tmp_path / "escape", recipe={"heads": {"copa": "../mrpc/adapter"}})
    cases["refusing the file name '../../copa'"] = edited_copy(
        sources["avg"], tmp_path / "escape_label", recipe={"heads": {"../../copa": "heads/copa"}})
    recipe = json.loads((sources["avg"] / "recipe.json").read_text())
    recipe["inputs"][1]["fingerprint"] = "0123456789abcdef"
    cases["fingerprint mismatch in .* its inputs were trained on other bases"] = edited_copy(
        sources["avg"], tmp_path / "mixed_bases", recipe={"inputs": recipe["inputs"]})
    cases["fingerprint mismatch in .* the fusion was trained on 0123456789abcdef"] = edited_copy(
        sources["fusion"], tmp_path / "fusion_base", run={"fingerprint": "0123456789abcdef"})
    cases["AdapterFusion training in .* is not finished"] = edited_copy(
        sources["fusion"], tmp_path / "fusion_running", run={"status": "running"})
    for message, src in cases.items():
        with pytest.raises(AdaptertxError, match=message):
            export(src, "me/x", tmp_path / "export")
        assert not (tmp_path / "export").exists(), message

    with pytest.raises(AdaptertxError, match="not of the form OWNER/NAME"):
        export(sources["mrpc"], "just-a-name", tmp_path / "export")
    with pytest.raises(AdaptertxError, match="must lie outside the source folder"):
        export(sources["mrpc"], "me/x", sources["mrpc"] / "export")
    assert not (sources["mrpc"] / "export").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(AdaptertxError, match="not an adaptertx export folder"):
        export(sources["mrpc"], "me/x", foreign)
    assert files_of(foreign) == {"notes.txt": b"mine"}

    # A failed re-export leaves the earlier export as it was.
    good = export(sources["mrpc"], "me/x", tmp_path / "export").out
    before = files_of(good)
    with pytest.raises(AdaptertxError, match="pickled weights"):
        export(pickled, "me/x", good)
    assert files_of(good) == before


# ------------------------------------------------------------------------------ push over HTTP

PUSH = """
import json, sys
from adaptertx.errors import AdaptertxError
from adaptertx.hub import push
try:
    result = push(**json.loads(sys.argv[1]))
except AdaptertxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(result.__dict__))
"""


def hub_env(hub: HubServer, tmp_path: Path, token: str | None) -> dict:
    """A process environment pointed at the local Hub, with no Hub login of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_DEBUG="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_push(hub, tmp_path, folder, repo_id, *, token=TOKEN, **kwargs):
    """``adaptertx.hub.push`` in a fresh process (huggingface_hub reads HF_ENDPOINT at import)."""
    args = json.dumps(dict(export_dir=str(folder), repo_id=repo_id, **kwargs))
    return subprocess.run([sys.executable, "-c", PUSH, args], env=hub_env(hub, tmp_path, token),
                          capture_output=True, text=True, timeout=120)


def test_push_uploads_the_export_byte_for_byte_in_one_commit(hub, sources, tmp_path):
    out = export(sources["avg"], "me/avg-adapter", tmp_path / "export").out
    before = files_of(out)
    proc = run_push(hub, tmp_path, out, "me/avg-adapter", private=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    repo = hub.repos["me/avg-adapter"]
    assert repo.private is True and len(repo.commits) == 1 and result["oid"] == repo.branches["main"].head
    received = repo.branches["main"].files
    expected = {k: v for k, v in before.items() if k != MANIFEST}
    assert received == expected  # every file, byte for byte; the local manifest stays local
    assert repo.branches["main"].lfs_paths == {k for k in expected if k.endswith(".safetensors")}
    assert sorted(hub.lfs_uploads) == sorted({hashlib.sha256(v).hexdigest() for k, v in expected.items()
                                              if k.endswith(".safetensors")})
    assert hub.validated_cards == [expected["README.md"].decode()] * len(hub.validated_cards)
    assert hub.unknown == []
    seen = {(method, path) for method, path, _ in hub.requests}
    assert {("POST", "/api/repos/create"), ("POST", "/api/models/me/avg-adapter/preupload/main"),
            ("POST", "/me/avg-adapter.git/info/lfs/objects/batch"),
            ("POST", "/api/models/me/avg-adapter/commit/main")} <= seen
    for method, path, auth in hub.requests:
        assert auth == (None if method == "PUT" else f"Bearer {TOKEN}"), path
    # The token shows up nowhere: not in the output (with huggingface_hub's debug logging on),
    # not in any file of the export folder, which the push left as it was.
    assert TOKEN not in proc.stdout + proc.stderr
    assert files_of(out) == before and not any(TOKEN.encode() in data for data in before.values())


def test_an_interrupted_push_completes_on_rerun_without_duplicates(hub, sources, tmp_path):
    out = export(sources["fusion"], "me/fusion", tmp_path / "export").out
    hub.fail_commits = 1  # the server dies after receiving the commit
    failed = run_push(hub, tmp_path, out, "me/fusion")
    assert failed.returncode == 1
    assert "push to me/fusion failed" in failed.stderr and "run the same push again" in failed.stderr
    assert TOKEN not in failed.stdout + failed.stderr
    repo = hub.repos["me/fusion"]
    assert repo.commits == [] and repo.branches["main"].files == {}
    uploaded = list(hub.lfs_uploads)
    assert uploaded  # the weights reached storage before the commit failed

    done = run_push(hub, tmp_path, out, "me/fusion")
    assert done.returncode == 0, done.stderr
    assert len(repo.commits) == 1 and hub.lfs_uploads == uploaded  # no weight file sent twice
    assert repo.branches["main"].files == {k: v for k, v in files_of(out).items() if k != MANIFEST}

    again = run_push(hub, tmp_path, out, "me/fusion")  # nothing changed: no new (empty) commit
    assert again.returncode == 0, again.stderr
    assert len(repo.commits) == 1 and json.loads(again.stdout)["oid"] == json.loads(done.stdout)["oid"]
    assert json.loads(done.stdout)["changed"] is True and json.loads(again.stdout)["changed"] is False


def test_push_to_a_branch_and_as_a_pull_request(hub, sources, tmp_path):
    out = export(sources["mrpc"], "me/mrpc", tmp_path / "export").out
    branch = run_push(hub, tmp_path, out, "me/mrpc", revision="dev")
    assert branch.returncode == 0, branch.stderr
    repo = hub.repos["me/mrpc"]
    assert repo.branches["main"].files == {} and "adapter.safetensors" in repo.branches["dev"].files
    assert json.loads(branch.stdout)["revision"] == "dev" and repo.commits[0]["branch"] == "dev"
    pr = run_push(hub, tmp_path, out, "me/mrpc", create_pr=True)
    assert pr.returncode == 0, pr.stderr
    assert json.loads(pr.stdout)["pr_url"].endswith("/me/mrpc/discussions/1")
    assert repo.branches["main"].files == {} and repo.branches["refs/pr/1"].files == repo.branches["dev"].files


def test_push_refusals_make_no_request_and_leak_no_token(hub, sources, tmp_path):
    out = export(sources["mrpc"], "me/mrpc", tmp_path / "export").out
    no_token = run_push(hub, tmp_path, out, "me/mrpc", token=None)
    assert no_token.returncode == 1 and "no Hugging Face token" in no_token.stderr
    with pytest.raises(AdaptertxError, match="not of the form OWNER/NAME"):
        push(out, "mrpc", token=TOKEN)
    with pytest.raises(AdaptertxError, match="HF_ENDPOINT"):
        push(out, "me/mrpc", token=TOKEN, endpoint=hub.url)
    with pytest.raises(AdaptertxError, match="not an export folder"):
        push(sources["mrpc"], "me/mrpc", token=TOKEN)
    assert hub.requests == []

    wrong = run_push(hub, tmp_path, out, "me/mrpc", token="hf_wrongTokenValue_12345")
    assert wrong.returncode == 1 and "refused the token" in wrong.stderr
    assert "hf_wrongTokenValue_12345" not in wrong.stdout + wrong.stderr and "me/mrpc" not in hub.repos

    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    weights = changed / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(AdaptertxError, match="changed since it was exported"):
        push(changed, "me/mrpc", token=TOKEN)
    linked = tmp_path / "linked"
    shutil.copytree(out, linked)
    (linked / "id_rsa").symlink_to(tmp_path / "secret")
    with pytest.raises(AdaptertxError, match="is a link"):
        push(linked, "me/mrpc", token=TOKEN)
    assert [path for _, path, _ in hub.requests if "/api/repos/create" not in path] == []


# ------------------------------------------------------------------------------ CLI


def test_cli_export(sources, tmp_path):
    from adaptertx.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["export", str(sources["avg"]), "--repo-id", "me/avg", "--out", str(tmp_path / "e"),
                              "--license", "cc-by-nc-4.0"])
    assert ok.exit_code == 0, ok.output
    assert "average: 9 files ->" in ok.output and "card written" in ok.output
    assert front_matter((tmp_path / "e" / "README.md").read_text())["license"] == "cc-by-nc-4.0"
    bad = runner.invoke(main, ["export", str(sources["avg"]), "--repo-id", "me/a/b", "--out", str(tmp_path / "f")])
    assert bad.exit_code == 1 and "not of the form OWNER/NAME" in bad.output and not (tmp_path / "f").exists()
    unfinished = edited_copy(sources["mrpc"], tmp_path / "running", run={"status": "running"})
    again = runner.invoke(main, ["export", str(unfinished), "--repo-id", "me/x", "--out", str(tmp_path / "g")])
    assert again.exit_code == 1 and "is not finished" in again.output


@pytest.mark.slow
def test_cli_export_and_push_in_a_process(hub, sources, tmp_path):
    out = tmp_path / "export"
    command = [sys.executable, "-m", "adaptertx.cli", "export", str(sources["fusion"]), "--repo-id", "me/fusion",
               "--out", str(out), "--push", "--private"]
    proc = subprocess.run(command, env=hub_env(hub, tmp_path, TOKEN), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pushed to me/fusion@main: " in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    repo = hub.repos["me/fusion"]
    assert repo.private is True and repo.branches["main"].files == {k: v for k, v in files_of(out).items()
                                                                     if k != MANIFEST}
    assert not any(TOKEN.encode() in data for data in files_of(out).values())


def test_provenance_names_inputs_by_fingerprint_and_relative_path(sources, tmp_path):
    from adaptertx.rundir import sha256_file

    recipe = json.loads((sources["avg"] / "recipe.json").read_text())
    for i, task in zip(recipe["inputs"], ("mrpc", "copa"), strict=True):
        assert i["run_dir"] == f"../{task}" and i["fingerprint"] == recipe["fingerprint"]
        assert i["adapter_sha256"] == sha256_file(sources[task] / "adapter" / "adapter.safetensors")
    moved = tmp_path / "moved"
    shutil.copytree(sources["avg"].parent, moved)  # the study folder moved: the recipe still finds its inputs
    from adaptertx.evaluation import load_intermediate

    assert load_intermediate(moved / "fusion").adapters[0].resolve() == (moved / "mrpc" / "adapter").resolve()
    roots = {str(sources["avg"].parent), str(Path(sources["avg"]).resolve().parent), str(tmp_path)}
    for name in ("avg", "fusion", "mrpc"):
        out = export(sources[name], f"me/{name}", tmp_path / f"export-{name}").out
        for f in ("recipe.json", "run.json", "README.md"):
            if (out / f).is_file():
                text = (out / f).read_text()
                assert not any(root in text for root in roots), (name, f)
                assert '"/' not in text or f == "README.md", (name, f)
