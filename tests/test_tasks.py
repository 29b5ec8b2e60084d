import pytest

from adaptertx import data
from adaptertx.errors import AdaptertxError
from adaptertx.languages import is_low_resource
from adaptertx.tasks import FAMILIES, TASKS, HubSource, Task, get_task, register, tasks

PAPER_INTERMEDIATE = {"anli", "mnli", "qqp", "squad", "squad_v2", "hellaswag", "cosmosqa",
                      "commonsenseqa", "ccg"}
XTREME_R = {"xnli", "xcopa", "udpos", "panx", "xquad", "mlqa", "tydiqa", "tatoeba", "lareqa", "mewsli_x"}


def test_registry_holds_the_paper_and_xtreme_r_tasks():
    assert PAPER_INTERMEDIATE | {"siqa", "mrpc"} <= {t.name for t in tasks(role="intermediate")}
    assert XTREME_R | {"bucc", "masakhaner"} <= {t.name for t in tasks(role="target")}


def test_every_task_is_consistent():
    for t in TASKS.values():
        assert t.family in FAMILIES
        assert t.low_resource == tuple(c for c in t.languages if is_low_resource(c))
        assert len(set(t.languages)) == len(t.languages), t.name
        if t.family in ("classification", "tagging") and t.name != "ccg":
            assert t.labels, t.name
        if t.role == "intermediate":
            assert t.languages == ("en",)
        if t.role == "target" and t.family != "retrieval":
            # A target is trained on English data of a known task, never on its own test items.
            assert t.english_train in TASKS, t.name
            assert "en" in TASKS[t.english_train].languages
        assert t.hub.dataset or t.hub.note, f"{t.name}: no Hub source and no note saying why"


def test_bundled_tasks_name_bundled_datasets():
    bundled = data.available()
    for t in TASKS.values():
        if t.bundled:
            assert t.bundled in bundled, t.name
            # Every bundled language is one of the task's languages.
            assert set(bundled[t.bundled]) <= set(t.languages), (t.name, set(bundled[t.bundled]) - set(t.languages))


def test_low_resource_marks():
    assert get_task("masakhaner").low_resource == get_task("masakhaner").languages
    assert "sw" in get_task("xnli").low_resource and "de" not in get_task("xnli").low_resource
    assert {"ht", "qu", "sw"} <= set(get_task("xcopa").low_resource)


def test_unknown_task_and_language_are_clear_errors():
    with pytest.raises(AdaptertxError, match="unknown task 'xnlj'; known tasks: .*xnli"):
        get_task("xnlj")
    with pytest.raises(AdaptertxError, match="task 'xnli' has no language 'yo'"):
        get_task("xnli").check_language("yo")
    with pytest.raises(AdaptertxError, match="unknown task family"):
        tasks(family="regression")
    assert get_task("XNLI").check_language("swa") == "sw"


def test_registry_refuses_duplicates_and_bad_families():
    with pytest.raises(ValueError, match="already registered"):
        register(Task("xnli", "classification", "target", "accuracy", ("en",), HubSource("x")))
    with pytest.raises(ValueError, match="family 'regression'"):
        Task("t", "regression", "target", "accuracy", ("en",), HubSource("x"))
