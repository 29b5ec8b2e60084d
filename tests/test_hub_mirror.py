"""Model repositories downloaded from the local Hub (tests/hub_server.py) over the real HTTP API:
``huggingface_hub`` (``snapshot_download``, ``hf_hub_download``, ``HfApi``) in this process with an
explicit endpoint, ``transformers``' ``from_pretrained`` and adaptertx's loader in a fresh one (they
read ``HF_ENDPOINT`` and the cache folders when imported)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import torch
from hub_server import HubServer, git_blob_sha1
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import reset_sessions
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_mirrorTestToken_0123456789"
REPO = "mirror/tiny-xlmr"
CARD = "---\nlicense: mit\ntags:\n- adaptertx-test\n---\n# A tiny random XLM-R\n"
TEXTS = ["Hello world!", "Habari ya dunia, rafiki mpendwa."]


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """The repository's two revisions as folders: ``main`` (a saved tiny XLM-R with the real vocabulary,
    a card and a subfolder) and ``v1`` (the same files with other weights); ``input_ids``: TEXTS as
    the saved tokenizer encodes them."""
    from transformers import XLMRobertaModel

    from adaptertx.models import tiny_xlmr

    root = tmp_path_factory.mktemp("mirror")
    model, tokenizer = tiny_xlmr(num_layers=1, hidden=32, heads=2, intermediate=64)
    main = root / "main"
    model.save_pretrained(main)
    tokenizer.save_pretrained(main)
    (main / "README.md").write_text(CARD)
    (main / "1_Pooling").mkdir()
    (main / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    v1 = root / "v1"
    shutil.copytree(main, v1)
    torch.manual_seed(1)
    XLMRobertaModel(model.config).save_pretrained(v1)
    return {"main": main, "v1": v1, "input_ids": tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]}


@pytest.fixture(scope="module")
def hub(folders):
    with HubServer(TOKEN) as server:
        for rev in ("main", "v1"):
            assert server.add_model(REPO, folders[rev], revision=rev) == sha(server, rev)
        yield server


def sha(hub: HubServer, rev: str) -> str:
    """The commit the served revision ``rev`` of REPO points at."""
    return hub.models[REPO][rev].sha


@pytest.fixture(scope="module", autouse=True)
def online():
    """This process asks the local Hub even where HF_HUB_OFFLINE was set when huggingface_hub was
    imported (the flag is read then, and built into each thread's cached HTTP session)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        reset_sessions()
        yield
    reset_sessions()


# ------------------------------------------------------------------------------ huggingface_hub, in process


def test_snapshot_download_gives_the_folder_byte_for_byte(hub, folders, tmp_path):
    for rev in ("main", "v1"):
        path = snapshot_download(REPO, revision=rev, endpoint=hub.url, cache_dir=tmp_path, token=False)
        assert files_of(Path(path)) == files_of(folders[rev]), rev
        assert Path(path).name == sha(hub, rev)
    assert sha(hub, "main") != sha(hub, "v1")
    # The commit sha follows from the repository id and the files alone.
    assert HubServer(TOKEN).add_model(REPO, folders["v1"], revision="other") == sha(hub, "v1")
    # By commit sha too; a snapshot already cached is not downloaded again.
    before = len(hub.requests)
    path = snapshot_download(REPO, revision=sha(hub, "v1"), endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert files_of(Path(path)) == files_of(folders["v1"])
    assert [(m, p) for m, p, _ in hub.requests[before:]] == [("GET", f"/api/models/{REPO}/revision/{sha(hub, 'v1')}")]
    assert hub.unknown == []


def test_model_info_listing_and_file_metadata(hub, folders):
    api = HfApi(endpoint=hub.url, token=False)
    local = files_of(folders["main"])
    info = api.model_info(REPO, files_metadata=True)
    assert info.id == REPO and info.sha == sha(hub, "main") and info.private is False
    assert [s.rfilename for s in info.siblings] == sorted(local)
    siblings = {s.rfilename: s for s in info.siblings}
    weights = local["model.safetensors"]
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["model.safetensors"].size == len(weights)
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(local["config.json"])
    assert info.card_data.license == "mit" and "adaptertx-test" in info.tags
    assert info.config["model_type"] == "xlm-roberta" and info.library_name == "transformers"
    params = sum(t.numel() for t in load_file(folders["main"] / "model.safetensors").values())
    assert info.safetensors.total == params == info.safetensors.parameters["F32"]
    assert api.model_info(REPO, revision="v1").sha == sha(hub, "v1")
    assert api.model_info(REPO, revision=sha(hub, "v1")).sha == sha(hub, "v1")

    assert api.list_repo_files(REPO) == sorted(local)
    top = {e.path for e in api.list_repo_tree(REPO)}
    assert "1_Pooling" in top and "1_Pooling/config.json" not in top
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="1_Pooling")] == ["1_Pooling/config.json"]
    entries = {e.path: e for e in api.get_paths_info(REPO, ["model.safetensors", "1_Pooling", "nope.txt"])}
    assert set(entries) == {"model.safetensors", "1_Pooling"}
    assert entries["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()

    # What hf_hub_download reads off a HEAD: the commit, the etag (git blob sha1 of a regular file,
    # sha256 of an LFS one, found behind the redirect to the storage) and the size.
    meta = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=hub.url), token=False)
    assert (meta.commit_hash, meta.etag, meta.size) == (sha(hub, "main"), git_blob_sha1(local["config.json"]),
                                                        len(local["config.json"]))
    meta = get_hf_file_metadata(hf_hub_url(REPO, "model.safetensors", revision="v1", endpoint=hub.url), token=False)
    v1_weights = (folders["v1"] / "model.safetensors").read_bytes()
    assert (meta.commit_hash, meta.etag, meta.size) == (sha(hub, "v1"), hashlib.sha256(v1_weights).hexdigest(),
                                                        len(v1_weights))
    assert meta.location.startswith(f"{hub.url}/cdn-lfs/")
    assert hub.unknown == []


def test_resolve_honours_ranges_and_redirects_lfs_files(hub, folders):
    weights = (folders["main"] / "model.safetensors").read_bytes()
    url = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    head = requests.head(url, allow_redirects=False, timeout=10)
    assert head.status_code == 302 and head.headers["X-Linked-Size"] == str(len(weights))
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    part = requests.get(url, headers={"Range": "bytes=8-23"}, timeout=10)  # follows the redirect
    assert part.status_code == 206 and part.content == weights[8:24]
    assert part.headers["Content-Range"] == f"bytes 8-23/{len(weights)}"
    assert requests.get(url, headers={"Range": "bytes=-5"}, timeout=10).content == weights[-5:]
    assert requests.get(url, timeout=10).content == weights
    config = (folders["main"] / "config.json").read_bytes()
    tail = requests.get(f"{hub.url}/{REPO}/resolve/main/config.json", headers={"Range": "bytes=10-"}, timeout=10)
    assert tail.status_code == 206 and tail.content == config[10:]
    beyond = requests.get(f"{hub.url}/{REPO}/resolve/main/config.json",
                          headers={"Range": f"bytes={len(config)}-"}, timeout=10)
    assert beyond.status_code == 416


def test_errors_are_the_clients_own_exceptions(hub, tmp_path):
    def download(repo=REPO, filename="config.json", **kwargs):
        kwargs.setdefault("token", False)
        return hf_hub_download(repo, filename, endpoint=hub.url, cache_dir=tmp_path, **kwargs)

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        download("mirror/no-such-model")
    with pytest.raises(RepositoryNotFoundError) as logged_in:
        download("mirror/no-such-model", token=TOKEN)
    assert (anonymous.value.response.status_code, logged_in.value.response.status_code) == (401, 404)
    with pytest.raises(RevisionNotFoundError):
        download(revision="v9")
    with pytest.raises(EntryNotFoundError) as missing:
        download(filename="adapter_config.json")
    # The absence is remembered for the commit, so the client does not ask again.
    assert missing.value.response.headers["X-Repo-Commit"] == sha(hub, "main")
    assert (tmp_path / "models--mirror--tiny-xlmr" / ".no_exist" / sha(hub, "main") / "adapter_config.json").exists()
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("mirror/no-such-model")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="v9")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="additional_chat_templates"))
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("mirror/no-such-model", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert hub.unknown == []


# ------------------------------------------------------------------------ transformers and adaptertx, in a process

# Pauses at each phase ("PHASE name", then a line on stdin) so the parent can cut the server's request
# log into phases. The reference outputs (the models loaded from the folders) are computed in the same
# process (same threads, same kernels), on the batch of the downloaded tokenizer.
LOADS = r"""
import json, os, sys
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer
from adaptertx.errors import AdaptertxError
from adaptertx.models import load_model

torch.set_num_threads(1)
folder, folder_v1, out, cache, texts = sys.argv[1:6]
REPO = "mirror/tiny-xlmr"
TEXTS = json.loads(texts)

def phase(name):
    print("PHASE", name, flush=True)
    sys.stdin.readline()

def outputs(name, model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    save_file({"input_ids": batch["input_ids"].contiguous(), "hidden": hidden.contiguous()}, f"{out}/{name}.st")

for name in ("first", "second"):  # transformers with its own cache folder, twice
    phase(name)
    model = AutoModel.from_pretrained(REPO, cache_dir=cache)
    tokenizer = AutoTokenizer.from_pretrained(REPO, cache_dir=cache)
    outputs(name, model, tokenizer)
outputs("local", AutoModel.from_pretrained(folder), tokenizer)
outputs("local-v1", AutoModel.from_pretrained(folder_v1), tokenizer)
phase("adaptertx")  # the default cache (HF_HOME), still empty
outputs("adaptertx", *load_model(REPO))
phase("v1")
outputs("v1", AutoModel.from_pretrained(REPO, revision="v1", cache_dir=cache), tokenizer)
phase("errors")
errors = {}
try:
    load_model("mirror/no-such-model")
except AdaptertxError as e:
    errors["adaptertx"] = str(e)
for key, kwargs in (("repo", dict(pretrained_model_name_or_path="mirror/no-such-model")),
                    ("revision", dict(pretrained_model_name_or_path=REPO, revision="v9"))):
    try:
        AutoConfig.from_pretrained(**kwargs, cache_dir=cache)
    except OSError as e:
        errors[key] = str(e)
phase("end")
print("RESULT" + json.dumps(errors), flush=True)
sys.stderr.flush()
os._exit(0)  # skip the interpreter's teardown of torch and the tokenizers (seconds here)
"""


def run_loads(hub: HubServer, folders: dict, tmp_path: Path) -> tuple[dict, dict[str, list], str]:
    """Run LOADS against the local Hub; returns its result, the requests of each phase and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(ROOT))
    (tmp_path / "out").mkdir()
    args = [str(folders["main"]), str(folders["v1"]), str(tmp_path / "out"), str(tmp_path / "tf-cache"),
            json.dumps(TEXTS)]
    with open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", LOADS, *args], env=env, cwd=tmp_path, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        watchdog = threading.Timer(240, proc.kill)
        watchdog.start()
        marks, result = [], None
        try:
            for line in proc.stdout:
                if line.startswith("PHASE "):
                    marks.append((line.split()[1], len(hub.requests)))
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                elif line.startswith("RESULT"):
                    result = json.loads(line[len("RESULT"):])
            proc.wait()
        finally:
            watchdog.cancel()
        stderr.seek(0)
        err = stderr.read()
    assert proc.returncode == 0 and result is not None, err[-4000:]
    phases = {name: [(m, p) for m, p, _ in hub.requests[start:end]]
              for (name, start), (_, end) in zip(marks, marks[1:], strict=False)}
    return result, phases, err


def test_from_pretrained_and_adaptertx_load_by_hub_id(hub, folders, tmp_path):
    errors, phases, _ = run_loads(hub, folders, tmp_path)
    out = {p.stem: load_file(p) for p in (tmp_path / "out").glob("*.st")}
    local = out["local"]
    for name in ("first", "second", "adaptertx"):
        assert torch.equal(out[name]["input_ids"], folders["input_ids"]), name  # the saved tokenizer
        assert torch.equal(out[name]["hidden"], local["hidden"]), name  # the saved weights: the same outputs
    assert torch.equal(out["v1"]["hidden"], out["local-v1"]["hidden"])
    assert not torch.allclose(out["v1"]["hidden"], local["hidden"])

    main_weights = hashlib.sha256((folders["main"] / "model.safetensors").read_bytes()).hexdigest()
    first = phases["first"]
    assert ("GET", f"/{REPO}/resolve/main/config.json") in first
    assert ("GET", f"/cdn-lfs/{main_weights}") in first  # the weights, from the storage the HEAD redirected to
    # Optional files were probed and, answered EntryNotFound, remembered as absent for the commit.
    assert ("HEAD", f"/{REPO}/resolve/main/chat_template.jinja") in first
    absent = tmp_path / "tf-cache" / "models--mirror--tiny-xlmr" / ".no_exist" / sha(hub, "main")
    assert {"chat_template.jinja", "added_tokens.json"} <= {p.name for p in absent.iterdir()}

    # The second load is served from the cache: the client revalidates main with a HEAD and reads
    # metadata, but downloads no file.
    second = phases["second"]
    assert ("HEAD", f"/{REPO}/resolve/main/config.json") in second
    assert all(m == "HEAD" or p.startswith("/api/models/") for m, p in second), second
    assert not any("/cdn-lfs/" in p for _, p in second)

    # adaptertx, with the default (empty) cache, downloads the model itself.
    assert ("GET", f"/cdn-lfs/{main_weights}") in phases["adaptertx"]
    v1_weights = hashlib.sha256((folders["v1"] / "model.safetensors").read_bytes()).hexdigest()
    assert ("HEAD", f"/{REPO}/resolve/v1/config.json") in phases["v1"]
    assert ("GET", f"/cdn-lfs/{v1_weights}") in phases["v1"]

    message = errors["adaptertx"]
    assert message.startswith("unknown model 'mirror/no-such-model'") and "\n" not in message
    assert "the Hub has no model 'mirror/no-such-model'" in message
    assert "is not a local folder and is not a valid model identifier" in errors["repo"]
    assert "v9" in errors["revision"] and "not a valid git identifier" in errors["revision"]
    assert hub.unknown == []
