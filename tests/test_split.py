import numpy as np
import pytest

from cifake.core.errors import ConfigError
from cifake.data.split import stratified_split


def test_split_is_stratified_disjoint_complete_and_seeded() -> None:
    labels = np.array([0] * 300 + [1] * 100)
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 40 and len(train) == 360
    assert np.bincount(labels[val]).tolist() == [30, 10]  # class ratio kept
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(400))
    again = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(again[1], val)
    other = stratified_split(labels, 0.1, seed=4)
    assert not np.array_equal(other[1], val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ConfigError, match="validate_on=test"):
        stratified_split(np.array([0, 1] * 10), fraction, seed=0)
