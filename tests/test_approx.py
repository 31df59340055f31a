"""The tolerant tree comparison used to hold refitted artifacts against shipped ones."""

import pytest
from approx import assert_tree_close, tree_mismatch


def test_last_digit_float_noise_matches():
    a = {"coef": [2.2663281251659484, -0.5], "name": "logistic", "n": 3}
    b = {"coef": [2.2663281251659613, -0.5], "name": "logistic", "n": 3}
    assert_tree_close(a, b)


@pytest.mark.parametrize(
    "b, where",
    [
        ({"coef": [2.2664, -0.5], "name": "logistic"}, "coef[0]"),
        ({"coef": [2.2663281251659484], "name": "logistic"}, "coef: lengths"),
        ({"coef": [2.2663281251659484, -0.5], "name": "isotonic"}, "name"),
        ({"coef": [2.2663281251659484, -0.5]}, "keys differ"),
    ],
)
def test_real_differences_are_named(b, where):
    a = {"coef": [2.2663281251659484, -0.5], "name": "logistic"}
    found = tree_mismatch(a, b)
    assert found is not None and where in found


def test_bools_are_not_numbers():
    assert tree_mismatch({"x": True}, {"x": 1}) is not None
