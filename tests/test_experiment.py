import json
import os
import socket

import pytest
from click.testing import CliRunner

from adaptertx.environment import resolve_device
from adaptertx.errors import AdaptertxError
from adaptertx.experiment import cell_id, load_study, run_study
from adaptertx.results import computed, read_store

STUDY = """
[study]
name = "tiny"
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
name = "mnli"
method = "single"
tasks = ["mnli"]

[[configs]]
name = "average"
method = "average"
tasks = ["mrpc", "siqa"]

[[configs]]
name = "fusion"
method = "fusion"
tasks = ["mrpc", "siqa"]

[targets]
tasks = ["xcopa", "tatoeba"]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 48
max_examples = 12
max_eval_examples = 8

[targets.languages]
xcopa = ["sw", "it"]
tatoeba = ["de", "sw"]
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def study_run(tmp_path_factory, tiny_xlmr_dir):
    root = tmp_path_factory.mktemp("study")
    config = write(root, STUDY.format(model=tiny_xlmr_dir))
    study = load_study(config)
    result = run_study(study, root / "out", progress=False, echo=lambda *_: None)
    return study, result, root, config


def test_grid_runs_records_failures_and_resumes(study_run):
    study, result, root, _ = study_run
    header, cells = read_store(root / "out")
    assert header["study_hash"] == study.study_hash()
    by_id = {c["cell"]: c for c in cells}
    assert len(by_id) == 10
    # mnli has no bundled data: its cells fail with the reason, the grid goes on.
    for target in ("xcopa", "tatoeba"):
        failed = by_id[cell_id("mnli", target, 0)]
        assert failed["status"] == "failed" and "no bundled English data" in failed["error"]
    assert set(result.failed) == {cell_id("mnli", "xcopa", 0), cell_id("mnli", "tatoeba", 0)}
    ok = by_id[cell_id("average", "xcopa", 0)]
    assert ok["status"] == "finished" and set(ok["languages"]) == {"sw", "it"}
    assert ok["intermediate"]["dir"].endswith("merged/average")
    assert ok["trace"]["fingerprint"] and ok["trace"]["versions"]["adapters"]
    assert ok["trace"]["device"] == str(resolve_device("auto"))  # auto, resolved where the cell ran
    assert {c["role"] for c in ok["trace"]["checkpoints"]} == {"intermediate", "target"}
    # The Fusion cell stores its attention over the task adapters per language and layer.
    attention = by_id[cell_id("fusion", "xcopa", 0)]["fusion_attention"]
    assert attention["adapters"] == ["mrpc", "siqa"] and set(attention["languages"]) == {"sw", "it"}
    assert all(abs(sum(layer) - 1) < 1e-3 for v in attention["languages"].values() for layer in v["mean"])
    assert "fusion_attention" not in ok
    fusion_tatoeba = by_id[cell_id("fusion", "tatoeba", 0)]
    assert fusion_tatoeba["status"] == "finished" and fusion_tatoeba["missing"]["sw"].startswith("not applicable")
    assert (root / "out" / "merged" / "average" / "recipe.json").is_file()

    # Run again: finished cells are skipped; only the failed ones run (and fail) again.
    again = run_study(study, root / "out", progress=False, echo=lambda *_: None)
    assert again.ran == [] and len(again.skipped) == 8 and set(again.failed) == set(result.failed)


def test_the_same_study_and_seed_give_identical_stores(study_run, tmp_path):
    study, _, root, _ = study_run
    run_study(study, tmp_path / "again", progress=False, echo=lambda *_: None)
    _, first = read_store(root / "out")
    _, second = read_store(tmp_path / "again")
    first = [c for c in first if c["cell"] in {c2["cell"] for c2 in second}]
    assert [computed(c) for c in first[:len(second)]] == [computed(c) for c in second]
    # Each trained cell stores its floors and whether its target adapter beat them on English.
    cell = next(c for c in second if c["cell"] == cell_id("average", "xcopa", 0))
    assert set(cell["learned"]) >= {"score", "floor", "low", "high", "learned", "split"}
    assert all(r["floor"]["chance"] == 50.0 and r["floor"]["majority"] is not None
               for r in cell["languages"].values())
    assert set(cell["intermediate"]["learned"]) == {"mrpc", "siqa"}
    tatoeba = next(c for c in second if c["cell"] == cell_id("none", "tatoeba", 0))
    assert tatoeba["learned"] is None
    assert tatoeba["languages"]["de"]["floor"] == {"majority": None, "chance": 100.0 / tatoeba["languages"]["de"]["n"]}


def test_a_store_of_another_study_is_refused(study_run, tmp_path):
    study, _, root, _ = study_run
    import dataclasses

    other = dataclasses.replace(study, seeds=(1,))
    assert other.study_hash() != study.study_hash()
    assert dataclasses.replace(study, description="words").study_hash() == study.study_hash()
    lines_before = (root / "out" / "results.jsonl").read_text()
    with pytest.raises(AdaptertxError, match="another study"):
        run_study(other, root / "out", progress=False, echo=lambda *_: None)
    assert (root / "out" / "results.jsonl").read_text() == lines_before


def test_report_from_the_study(study_run):
    from adaptertx.report import build_report, write_report

    _, _, root, _ = study_run
    path, report = write_report(root / "out", rounds=200)
    text = path.read_text()
    assert report.baseline == "none"
    assert "## Failed cells" in text and "mnli|xcopa|seed0" in text and "no bundled English data" in text
    assert "## Verdict" in text and "sw*" in text
    # The tiny model's XCOPA adapters stay at their floor: their cells are rows of their own and
    # nothing of XCOPA is averaged or plotted; Tatoeba, which trains nothing, is.
    assert all(c["target"] == "xcopa" for c in report.not_learned) and report.not_learned
    assert "(did not learn)" in text and not (path.parent / "gains_xcopa.png").exists()
    assert (path.parent / "gains_tatoeba.png").read_bytes()[:4] == b"\x89PNG"
    body = json.loads((path.parent / "report.json").read_text())
    assert body["baseline"] == "none" and "tatoeba" in body["scores"] and "xcopa" not in body["scores"]
    assert {c["target"] for c in body["not_learned"]} == {"xcopa"}
    assert build_report(root / "out", rounds=200).scores == report.scores


def test_cli_experiment_resumes_and_exits_1_on_failures(study_run):
    from adaptertx.cli import main

    _, _, root, config = study_run
    result = CliRunner().invoke(main, ["experiment", str(config), "--out", str(root / "out")])
    assert result.exit_code == 1, result.output
    assert "8 of 10 cells already finished" in result.output
    assert "failed: mnli|xcopa|seed0" in result.output
    assert "report:" in result.output


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace('tasks = ["mrpc"]\n', 'tasks = ["nope"]\n', 1), "unknown task 'nope'"),
    (lambda s: s.replace('method = "average"', 'method = "soup"'), r"method: expected one of .*got 'soup'"),
    (lambda s: s.replace('tasks = ["mnli"]', 'tasks = ["mnli", "mrpc"]'), "takes 1 tasks, got 2"),
    (lambda s: s.replace('tasks = ["xcopa", "tatoeba"]', 'tasks = ["xcopa", "siqa"]'), "'siqa' is not a target"),
    (lambda s: s.replace('tatoeba = ["de", "sw"]', 'tatoeba = ["de", "xx"]'), "unknown language code 'xx'"),
    (lambda s: s.replace('xcopa = ["sw", "it"]', 'xcopa = ["sw", "fr"]'), "no language 'fr'"),
    (lambda s: s.replace('xcopa = ["sw", "it"]', 'udpos = ["de"]'), "not a target of the study"),
    (lambda s: s.replace('name = "mnli"', 'name = "mrpc"'), "must be unique"),
    (lambda s: s.replace("max_eval_examples = 8", "max_eval_examples = 8\nbogus = 1"), "unknown key 'bogus'"),
    (lambda s: s.replace('quant = "none"', 'quant = "int4"'), "unknown quant"),
    (lambda s: s.replace("[study]", "[study\n"), "not valid TOML"),
    (lambda s: s.replace('name = "tiny"\n', ""), "needs a name"),
])
def test_bad_configs(tmp_path, edit, message):
    with pytest.raises(AdaptertxError, match=message):
        load_study(write(tmp_path, edit(STUDY.format(model="me5-small"))))


def test_shipped_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    studies = {p.stem: load_study(p) for p in sorted(root.glob("*.toml"))}
    assert {"offline-default", "paper-gpu"} <= set(studies)
    offline = studies["offline-default"]
    assert offline.model == "me5-small" and {c.method for c in offline.configs} >= {
        "none", "single", "average", "multitask"}
    assert len(offline.seeds) >= 3  # the verdict needs three seeds of every target adapter
    paper = studies["paper-gpu"]
    assert {"xnli", "xcopa", "udpos", "panx", "xquad", "mlqa", "tydiqa", "tatoeba", "lareqa", "mewsli_x"} <= set(
        paper.targets)


def test_target_data_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "xcopa-own"
    own.mkdir()
    (own / "qu.jsonl").write_text("{}\n", encoding="utf-8")
    (own / ".hidden").write_text("", encoding="utf-8")
    base = STUDY.format(model="me5-small").replace('xcopa = ["sw", "it"]', 'xcopa = ["sw", "it", "qu"]')
    plain = load_study(write(tmp_path, base))
    study = load_study(write(tmp_path, base + '\n[targets.data]\nxcopa = "xcopa-own"\n'))
    assert study.data_files_for("xcopa") == (("qu", str(own / "qu.jsonl")),)
    assert study.data_files_for("tatoeba") == () and plain.data_files_for("xcopa") == ()
    # Own data is part of the study's identity; unset, the hash is what it was before the option existed.
    assert study.study_hash() != plain.study_hash()
    import dataclasses
    import hashlib

    old = dataclasses.asdict(plain)
    for key in ("description", "data", "max_candidates", "pretraining_gib", "unknown_lang_low_resource"):
        old.pop(key)
    for key in ("intermediate", "target_budget"):  # the five budget keys studies first had
        old[key] = {k: old[key][k] for k in ("epochs", "batch_size", "lr", "max_length", "max_examples")}
    for c in old["configs"]:
        c.pop("fusion_data")
    assert plain.study_hash() == hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with pytest.raises(AdaptertxError, match=r"\[targets.data\] xcopa: expected a folder .*got 'nowhere'"):
        load_study(write(tmp_path, base + '\n[targets.data]\nxcopa = "nowhere"\n'))
    with pytest.raises(AdaptertxError, match=r"\[targets.data\] names 'xnli', which is not a target"):
        load_study(write(tmp_path, base + '\n[targets.data]\nxnli = "xcopa-own"\n'))
    # A file of a language the study's list leaves out is not silently ignored.
    narrow = base.replace('xcopa = ["sw", "it", "qu"]', 'xcopa = ["sw", "it"]')
    with pytest.raises(AdaptertxError, match=r"\[targets.data\] xcopa: holds files of qu, which \[targets.languages\] "
                                             r"xcopa leaves out"):
        load_study(write(tmp_path, narrow + '\n[targets.data]\nxcopa = "xcopa-own"\n'))


def test_own_files_of_codes_adaptertx_does_not_know(tmp_path, monkeypatch):
    # UD's Hebrew-English code-switching treebank is "qhe": no ISO 639 code, so the study must
    # say how the low-resource rule places it, as `adaptertx evaluate` must be told.
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "ud-own"
    own.mkdir()
    (own / "qhe_htb-ud-test.conllu").write_text("1\tx\t_\tNOUN\t_\t_\t0\troot\t_\t_\n\n", encoding="utf-8")
    base = STUDY.format(model="me5-small").replace('tasks = ["xcopa", "tatoeba"]', 'tasks = ["udpos", "tatoeba"]')
    base = base.replace('xcopa = ["sw", "it"]\n', "")
    with pytest.raises(AdaptertxError, match=r"\[targets.data\] udpos: holds files of qhe, not ISO 639 codes: "
                                             r"give each one's CC-100 size in \[targets.pretraining_gib\]"):
        load_study(write(tmp_path, base + '\n[targets.data]\nudpos = "ud-own"\n'))
    sized = load_study(write(tmp_path, base.replace("[targets.languages]", "pretraining_gib = { qhe = 0 }\n\n"
                                                    "[targets.languages]") + '\n[targets.data]\nudpos = "ud-own"\n'))
    assert sized.pretraining_gib == (("qhe", 0.0),) and sized.unknown_lang_low_resource is False
    flagged = load_study(write(tmp_path, base.replace("[targets.languages]", "unknown_lang_low_resource = true\n\n"
                                                      "[targets.languages]") + '\n[targets.data]\nudpos = "ud-own"\n'))
    assert flagged.unknown_lang_low_resource is True
    assert len({sized.study_hash(), flagged.study_hash()}) == 2
    with pytest.raises(AdaptertxError) as bad:
        load_study(write(tmp_path, base.replace("[targets.languages]", 'pretraining_gib = { de = 3, qhe = "none" }\n'
                                                "unknown_lang_low_resource = 1\n\n[targets.languages]")))
    text = str(bad.value)
    assert "3 problems" in text and "[targets.pretraining_gib] de: is the ISO 639 code 'de'" in text
    assert "[targets.pretraining_gib] qhe: expected a CC-100 size in GiB >= 0" in text
    assert "[targets] unknown_lang_low_resource: expected true or false, got 1" in text


def test_dev_chosen_weights_in_a_study(tmp_path):
    base = STUDY.format(model="me5-small")
    study = load_study(write(tmp_path, base.replace('method = "average"\n', 'method = "average"\nweights = "dev"\n')))
    assert next(c for c in study.configs if c.name == "average").weights == "dev"
    with pytest.raises(AdaptertxError, match='weights: "dev" applies to average, task_arithmetic and ties'):
        load_study(write(tmp_path, base.replace('method = "fusion"\n', 'method = "fusion"\nweights = "dev"\n')))
    with pytest.raises(AdaptertxError, match='weights: expected a list of numbers >= 0, one per task, or "dev"'):
        load_study(write(tmp_path, base.replace('method = "average"\n', 'method = "average"\nweights = "best"\n')))


MIXTURE_STUDY = """
[study]
name = "mix"
model = "{model}"
quant = "none"

[intermediate]
epochs = 1
batch_size = 4
lr = 1e-2
max_length = 48
max_examples = 12

[[configs]]
name = "fusion_mix"
method = "fusion"
fusion_data = "mixture"
tasks = ["mrpc", "siqa"]

[targets]
tasks = ["xcopa"]
epochs = 1
batch_size = 4
max_length = 48
max_examples = 12
max_eval_examples = 8

[targets.languages]
xcopa = ["sw"]
"""


def test_fusion_trained_on_the_task_mixture_in_a_study(tmp_path, tiny_xlmr_dir):
    study = load_study(write(tmp_path, MIXTURE_STUDY.format(model=tiny_xlmr_dir)))
    assert study.configs[0].fusion_data == "mixture"
    result = run_study(study, tmp_path / "out", progress=False, echo=lambda *_: None)
    assert not result.failed
    recipe = json.loads((tmp_path / "out" / "merged" / "fusion_mix" / "recipe.json").read_text())
    assert recipe["method"] == "fusion" and recipe["target"] == "mixture" and recipe["tasks"] == ["mrpc", "siqa"]
    _, cells = read_store(tmp_path / "out")
    cell = cells[0]
    assert cell["status"] == "finished" and cell["method"] == "fusion" and set(cell["languages"]) == {"sw"}
    assert cell["trace"]["intermediate"]["fusion_dir"].endswith("merged/fusion_mix/adapter")
    bad = MIXTURE_STUDY.format(model=tiny_xlmr_dir)
    with pytest.raises(AdaptertxError, match='fusion_data: expected "target" or "mixture", for method "fusion" only'):
        load_study(write(tmp_path, bad.replace('fusion_data = "mixture"', 'fusion_data = "both"')))
    with pytest.raises(AdaptertxError, match='for method "fusion" only'):
        load_study(write(tmp_path, bad.replace('method = "fusion"', 'method = "average"')))


@pytest.mark.parametrize("old, new, message", [
    ("seeds = [0]", 'seeds = "zero"', r"\[study\] seeds: expected a non-empty list .*got 'zero'"),
    ("seeds = [0]", "seeds = 0", r"\[study\] seeds: expected .*got 0"),
    ("seeds = [0]", "seeds = [0, 0]", r"\[study\] seeds: expected a non-empty list of distinct"),
    ("[intermediate]\nepochs = 1", '[intermediate]\nepochs = "one"', r"\[intermediate\] epochs must be a whole number, "
                                                                      r"got 'one'"),
    ("max_eval_examples = 8", 'max_eval_examples = "many"',
     r"\[targets\] max_eval_examples: expected a whole number >= 1, or leave it out, got 'many'"),
    ('tasks = ["xcopa", "tatoeba"]', 'tasks = "xcopa"', r"\[targets\] tasks: expected a list of target task names"),
    ("max_eval_examples = 8", "max_eval_examples = 8\nmax_steps = 0", r"\[targets\] max_steps must be at least 1"),
    ("max_eval_examples = 8", "max_eval_examples = 8\n\n[targets.overrides.xcopa]\nlr = -1.0",
     r"\[targets.overrides.xcopa\] lr must be positive, got -1.0"),
    ('name = "tiny"', 'name = "../../escape"', r"\[study\] name: expected a plain name .*got '../../escape'"),
    ('name = "tiny"', "name = 42", r"\[study\] name: expected a plain name .*got 42"),
    ('name = "average"', 'name = "../average"', r"configs\[3\] \(../average\) name: expected a plain name"),
    ('tasks = ["mrpc"]\n', 'tasks = "mrpc"\n', r"configs\[1\] \(mrpc\) tasks: expected a list of task names"),
    ("[[configs]]\nname = \"none\"", "[[configs]]\nname = \"none\"\ntemperature = \"hot\"",
     r"configs\[0\] \(none\) temperature: expected a number > 0, got 'hot'"),
])
def test_every_study_value_is_checked_at_load_time(tmp_path, old, new, message):
    text = STUDY.format(model="me5-small")
    assert old in text
    with pytest.raises(AdaptertxError, match=message):
        load_study(write(tmp_path, text.replace(old, new, 1)))


def test_every_problem_is_listed_at_once_and_nothing_is_written(tmp_path, monkeypatch):
    from adaptertx.cli import main

    text = (STUDY.format(model="me5-small").replace('name = "tiny"', 'name = "../../escape"')
            .replace("seeds = [0]", 'seeds = "zero"').replace("max_eval_examples = 8", 'max_eval_examples = "many"')
            .replace('tasks = ["xcopa", "tatoeba"]', 'tasks = ["xcopa", "tatoeba", "nope"]'))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(main, ["experiment", str(write(tmp_path, text))])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    for part in ("4 problems in the study file", "[study] name:", "[study] seeds:", "[targets] max_eval_examples:",
                 "unknown task 'nope'"):
        assert part in result.output
    assert list((tmp_path / "work").iterdir()) == [] and list(tmp_path.iterdir()) == [tmp_path / "work",
                                                                                       tmp_path / "study.toml"]


def test_a_study_folder_takes_one_driver_at_a_time(tmp_path):
    from adaptertx.experiment import lock_study

    study = load_study(write(tmp_path, STUDY.format(model="me5-small")))
    with lock_study(tmp_path / "out"):
        holder = rf"\(host {socket.gethostname()}, pid {os.getpid()}\)"
        with pytest.raises(AdaptertxError, match=rf"in use by another adaptertx experiment {holder}"):
            run_study(study, tmp_path / "out", progress=False, echo=lambda *_: None)
    assert not (tmp_path / "out" / "results.jsonl").exists()
