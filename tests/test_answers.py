import pytest

from pyramid_moa.answers import extract_gsm8k, get_task, normalize_number, normalize_text, numbers_equal


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("18", "18"),
        ("$1,200.", "1200"),
        ("3.0", "3"),
        ("2.50", "2.5"),
        ("-7", "-7"),
        ("45%", "45"),
        ("\\boxed{64}", "64"),
        ("\\boxed{\\frac{840}{13}}", None),  # tora_70b idx with a fraction: two numbers
        ("20/3", None),
        ("14:00", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        ("about 12 apples", "12"),
        ("0.1234567", "0.123457"),
    ],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        # routellm_mixtral_8x7b style: calculator annotations, then '#### N'
        ("$40 + $24 = $<<40+24=64>>64.\n#### 64", "64"),
        # a '####' with words (mixtral idx with 'Cannot share guns equally.') falls back to the last number
        ("6 guns to each of the 4 people.\n\n#### Cannot share guns equally.", "4"),
        # reread gpt-3.5 style
        ("we get $40 + $24 = $64.\n\nSo, the answer is \\boxed{64}.", "64"),
        # Faithful-COT style
        ("In total, Kylar needs to pay $40 + $24 = $64 for the 16 glasses. The answer is 64.", "64"),
        # ToRA style: program output then boxed
        ("```output\n64.0\n```\nKylar needs to pay $\\boxed{64}$ dollars.", "64"),
        ("The answer is $1,080.", "1080"),
        ("She has -3 left", "-3"),
        ("no numbers here", None),
        (None, None),
    ],
)
def test_extract_gsm8k(text, expected):
    assert extract_gsm8k(text) == expected


def test_numbers_equal_tolerance_and_none():
    assert numbers_equal("18", "18.00001")
    assert not numbers_equal("18", "18.001")
    assert not numbers_equal(None, "18")
    assert not numbers_equal(None, None)


def test_text_task_and_registry():
    t = get_task("text")
    assert t.extract("Reasoning...\nParis.") == t.extract("paris")
    assert normalize_text("  \n ") is None
    with pytest.raises(KeyError, match="unknown answer task 'nope'"):
        get_task("nope")
