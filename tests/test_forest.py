import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio

from cifake.core.errors import ConfigError, DataError
from cifake.models.forest import FORMAT_VERSION, META_MEMBER, ForestClassifier
from tests.helpers.config import conf_args

PARAMS = {"n_estimators": 15, "random_state": 0, "n_jobs": 1}


def forest(features: object, **kw: object) -> ForestClassifier:
    """A forest with conf/model/rf.yaml's settings but for ``kw`` (no image size or resampling
    recorded, as for a forest fitted outside a run)."""
    args = {**conf_args("model", ["model=rf"]), "image_size": None, "resample": None}
    return ForestClassifier(**{**args, "features": features, **kw})


def separable(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight 'report' columns of noise; column 0 is shifted far apart for REAL (1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] += 10 * y
    return X, y


class NotSklearn:
    """A type from outside sklearn/numpy, which load must refuse to build."""

    def __init__(self) -> None:
        self.x = 1


def test_fits_separable_data_and_reports_p_real() -> None:
    X, y = separable()
    model = forest("report", **PARAMS).fit(X, y)
    X_test, y_test = separable(seed=1)
    p = model.predict_proba_real(X_test)
    assert p.shape == (len(y_test),) and ((p >= 0) & (p <= 1)).all()
    assert ((p > 0.5) == y_test).all()  # accuracy 1.0, and high p means label 1 (REAL)
    importances = model.feature_importances
    assert list(importances) == model.feature_names and max(importances, key=importances.get) == "gray_mean"


def test_save_load_round_trip(tmp_path: Path) -> None:
    X, y = separable()
    model = forest({"name": "rich", "bands": 2}, **PARAMS, image_size=32)
    X = np.concatenate([X, np.zeros((len(X), len(model.feature_names) - 8), np.float32)], axis=1)
    model.fit(X, y)
    path = model.save(tmp_path / "sub" / "forest.skops")
    loaded = ForestClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba_real(X), model.predict_proba_real(X))
    assert loaded.metadata() == model.metadata()
    meta = json.loads(zipfile.ZipFile(path).read(META_MEMBER))
    assert meta["features"] == {"name": "rich", "bands": 2, "high_cutoff": 0.5}
    assert meta["classes"] == ["FAKE", "REAL"] and meta["image_size"] == 32
    assert meta["format_version"] == FORMAT_VERSION and len(meta["feature_names"]) == X.shape[1]
    assert [p.name for p in path.parent.iterdir()] == ["forest.skops"]  # no temporary file left


@pytest.mark.parametrize(("params", "grid", "match"), [
    ({"n_estimators": -1}, None, "n_estimators"),
    ({"n_trees": 10}, None, "n_trees"),
    ({"max_features": "most"}, None, "max_features"),
    ({}, {"max_dept": [1, 2]}, "max_dept"),
    ({}, {"max_depth": [2, -3]}, "max_depth"),
    ({}, {"max_depth": []}, "max_depth"),
])
def test_bad_parameters_are_refused_at_construction(params: dict, grid: dict | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        forest("report", grid=grid, **params)


def test_bad_feature_set_scoring_and_labels() -> None:
    with pytest.raises(ConfigError, match="report"):
        forest("nope")
    with pytest.raises(ConfigError, match="scoring"):
        forest("report", grid={"max_depth": [1]}, scoring="acuracy")
    X, _ = separable(20)
    with pytest.raises(DataError, match="both"):
        forest("report", **PARAMS).fit(X, np.ones(20, dtype=int))


def test_grid_search_picks_from_the_grid() -> None:
    X, y = separable()
    model = forest("report", **PARAMS, grid={"max_depth": [1, 3], "n_estimators": [5, 10]}, cv=2).fit(X, y)
    assert model.best_params["max_depth"] in (1, 3) and model.best_params["n_estimators"] in (5, 10)
    assert model.forest.max_depth == model.best_params["max_depth"]
    assert ((model.predict_proba_real(X) > 0.5) == y).all()


def test_load_refuses_missing_garbage_and_untrusted_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ForestClassifier.load(tmp_path / "missing.skops")
    garbage = tmp_path / "garbage.skops"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match="not a saved cifake forest"):
        ForestClassifier.load(garbage)
    bare = tmp_path / "bare.skops"  # a skops file without the forest's metadata
    sio.dump({"a": 1}, bare)
    with pytest.raises(ConfigError, match="not a saved cifake forest"):
        ForestClassifier.load(bare)

    X, y = separable()
    meta = forest("report", **PARAMS).fit(X, y).metadata()
    hostile = tmp_path / "hostile.skops"
    sio.dump(NotSklearn(), hostile)
    with zipfile.ZipFile(hostile, "a") as archive:
        archive.writestr(META_MEMBER, json.dumps(meta))
    with pytest.raises(ConfigError, match="NotSklearn"):
        ForestClassifier.load(hostile)
