import pytest

from adaptertx.errors import AdaptertxError
from adaptertx.languages import is_low_resource, name, normalize, pretraining_gib


@pytest.mark.parametrize("code,expected", [
    ("deu", "de"), ("cmn", "zh"), ("pes", "fa"), ("swh", "sw"), ("swa", "sw"), ("yor", "yo"),
    ("kab", "kab"), ("zsm", "ms"), ("EN", "en"), ("pt-BR", "pt"), ("zh_Hans", "zh"), ("kzj", "kzj"),
])
def test_normalize(code, expected):
    assert normalize(code) == expected


def test_unknown_code_is_a_clear_error():
    with pytest.raises(AdaptertxError, match="unknown language code 'qqq'"):
        normalize("qqq")
    with pytest.raises(AdaptertxError, match="unknown language code"):
        normalize("english")


def test_names():
    assert name("sw") == "Swahili"
    assert name("kab") == "Kabyle"
    assert name("cmn") == "Chinese"


def test_low_resource_rule_follows_cc100_sizes():
    # Table 6 of Conneau et al. (2020): Swahili 1.6 GiB, Basque 2.0, Telugu 4.7, Hindi 20.2.
    assert pretraining_gib("sw") == 1.6 and is_low_resource("sw")
    assert is_low_resource("eu") and is_low_resource("te")
    assert not is_low_resource("hi") and not is_low_resource("de") and not is_low_resource("en")
    # Not among XLM-R's 100 languages: low-resource whatever the task.
    assert pretraining_gib("yo") == 0.0 and is_low_resource("yo") and is_low_resource("kab")
