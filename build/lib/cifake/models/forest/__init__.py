"""The random-forest baseline, all of it in this folder: the image-statistics features it reads
(:mod:`cifake.models.forest.features`), the model here (a plain class: configured from dicts, checked before
any feature is computed, saved with skops, scoring uint8 images), and its fit with a network run's dashboards
(:mod:`cifake.models.forest.fit`, ``python train.py model=rf``). :func:`cifake.scoring.open_scorer` opens a saved
``.skops`` file as a Scorer."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV

from cifake.core.atomic import atomic_path
from cifake.core.errors import ConfigError, DataError
from cifake.models.forest.features import extract_features, feature_names, feature_params

FORMAT_VERSION = 1  # of the saved file; bump when its layout or metadata change
META_MEMBER = "cifake-forest.json"  # the metadata's entry in the skops zip archive
# Module roots whose types load() accepts beyond skops' defaults (a fitted forest needs
# sklearn.tree._tree.Tree). Anything else in a file is refused before it is loaded.
TRUSTED_MODULES = ("sklearn", "numpy")
# What a forest computes in, fitted or scoring: scikit-learn's trees compare float32 features with float32
# thresholds, on the CPU (scoring.precision does not change it).
FOREST_COMPUTED = {"precision": "32-true", "device": "cpu"}


def _check_estimator(estimator: RandomForestClassifier, where: str) -> None:
    """Run sklearn's own parameter checks without fitting.

    ``BaseEstimator._validate_params`` is what ``fit`` calls first (sklearn >= 1.2, against
    each estimator's ``_parameter_constraints``); it is the least private way to get sklearn's
    messages before any data exists. Checks between parameters (e.g. ``oob_score`` needing
    ``bootstrap``) still happen only at fit.
    """
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _make_forest(params: Mapping[str, Any]) -> RandomForestClassifier:
    known = RandomForestClassifier().get_params()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"unknown RandomForestClassifier parameter(s) {unknown} in model; "
                          f"valid ones: {sorted(known)}")
    forest = RandomForestClassifier(**params)
    _check_estimator(forest, "model")
    return forest


def _check_grid(forest: RandomForestClassifier, grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    known = forest.get_params()
    checked: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key not in known:
            raise ConfigError(f"unknown RandomForestClassifier parameter {key!r} in model.grid; "
                              f"valid ones: {sorted(known)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"model.grid.{key} must be a non-empty list of values, got {values!r}")
        for value in values:
            _check_estimator(clone(forest).set_params(**{key: value}), f"model.grid.{key}={value!r}")
        checked[key] = list(values)
    return checked


class ForestClassifier:
    """A ``RandomForestClassifier`` on one feature set, optionally tuned by a grid search.

    ``features`` is a feature-set name or a mapping with ``name`` and that set's parameters;
    every other keyword goes to ``RandomForestClassifier`` (``n_jobs``, ``random_state``
    included: ``model.n_estimators=300`` on the command line); with
    ``grid`` (parameter -> list of values) ``fit`` runs a ``GridSearchCV`` with ``cv`` folds
    ranked by ``scoring`` and keeps the best forest, refitted on all the data. Every value is
    checked here, before any feature is computed. Labels are indices into ``classes``; the
    probability reported is that of label 1 (REAL).
    """

    def __init__(
        self,
        features: str | Mapping[str, Any],
        grid: Mapping[str, Sequence[Any]] | None,
        cv: int | None,
        scoring: str | None,
        classes: Sequence[str],
        image_size: int | None,
        resample: str | None,
        **params: Any,
    ) -> None:
        spec = {"name": features} if isinstance(features, str) else dict(features)
        if "name" not in spec:
            raise ConfigError(f"model.features needs a 'name' (the feature set), got {spec}")
        self.feature_set: str = spec.pop("name")
        self.feature_params = feature_params(self.feature_set, **spec)
        self.feature_names = feature_names(self.feature_set, **self.feature_params)
        self.params = dict(params)
        self.forest = _make_forest(self.params)
        self.grid = _check_grid(self.forest, grid) if grid else None
        if self.grid is not None:
            if isinstance(cv, bool) or not isinstance(cv, int) or cv < 2:
                raise ConfigError(f"model.cv is the number of grid-search folds and must be >= 2, got {cv!r}")
            try:
                get_scorer(scoring)
            except ValueError as err:
                raise ConfigError(f"model.scoring={scoring!r} is not a scikit-learn scorer name: {err}") from err
        self.cv, self.scoring = cv, scoring
        if len(classes) != 2:
            raise ConfigError(f"the forest is a binary classifier: model.classes needs 2 names, got {list(classes)}")
        self.classes = tuple(classes)
        self.image_size = image_size
        self.resample = resample  # the filter the training images were resized with, for prediction
        self.best_params: dict[str, Any] | None = None
        self._fitted = False

    def _check_features(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (N, {len(self.feature_names)}) {self.feature_set!r} features, got {X.shape}")
        return X

    def fit(self, X: np.ndarray, y: np.ndarray) -> ForestClassifier:
        """Fit on features ``X`` ``(N, F)`` and labels ``y`` in {0, 1} (grid search first, if any)."""
        X, y = self._check_features(X), np.asarray(y)
        if set(np.unique(y).tolist()) != {0, 1}:
            raise DataError(f"training labels must hold both 0 ({self.classes[0]}) and 1 ({self.classes[1]}), "
                            f"got {np.unique(y).tolist()}; check the training split")
        if self.grid is None:
            self.forest = clone(self.forest).fit(X, y)
        else:
            search = GridSearchCV(clone(self.forest), self.grid, cv=self.cv, scoring=self.scoring, refit=True)
            search.fit(X, y)
            self.forest, self.best_params = search.best_estimator_, dict(search.best_params_)
        self._fitted = True
        return self

    def predict_proba_real(self, X: np.ndarray) -> np.ndarray:
        """Probability of label 1 (``classes[1]``, REAL) for each row of ``X``, as float32."""
        if not self._fitted:
            raise RuntimeError("fit or load the forest before predicting")
        column = list(self.forest.classes_).index(1)
        return self.forest.predict_proba(self._check_features(X))[:, column].astype(np.float32)

    @property
    def feature_importances(self) -> dict[str, float]:
        """Impurity-based importance of each feature, by name (they sum to 1)."""
        if not self._fitted:
            raise RuntimeError("fit or load the forest before asking for its importances")
        return dict(zip(self.feature_names, self.forest.feature_importances_.tolist(), strict=True))

    def metadata(self) -> dict[str, Any]:
        """What ``save`` stores next to the estimator (and ``load`` rebuilds the wrapper from)."""
        return {
            "format_version": FORMAT_VERSION,
            "features": {"name": self.feature_set, **self.feature_params},
            "feature_names": self.feature_names,
            "params": self.params,
            "best_params": self.best_params,
            "classes": list(self.classes),
            "image_size": self.image_size,
            "resample": self.resample,
        }

    def save(self, path: str | Path) -> Path:
        """Write the fitted forest to ``path`` (a skops zip; by convention ``*.skops``) with the
        metadata as a JSON entry of that archive, atomically (temporary file, then rename)."""
        if not self._fitted:
            raise RuntimeError("fit the forest before saving it")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            sio.dump(self.forest, tmp)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(META_MEMBER, json.dumps(self.metadata(), indent=1, default=str))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ForestClassifier:
        """Load a forest written by :meth:`save`.

        skops rebuilds objects without unpickling, and only instantiates types it is told to
        trust: its defaults (builtins, numpy arrays, sklearn estimators) plus those that
        ``skops.io.get_untrusted_types`` lists, which are accepted only from the modules in
        :data:`TRUSTED_MODULES` (a forest needs ``sklearn.tree._tree.Tree``). A file naming
        any other type is refused before anything in it is built.
        """
        path = Path(path)
        hint = "pass the .skops file that training the forest model wrote"
        if not path.is_file():
            raise ConfigError(f"forest file {str(path)!r} does not exist; {hint}")
        try:
            with zipfile.ZipFile(path) as archive:
                meta = json.loads(archive.read(META_MEMBER))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
            raise ConfigError(f"{str(path)!r} is not a saved cifake forest ({err}); {hint}") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{str(path)!r} has forest format {meta.get('format_version')!r}, this version "
                              f"reads {FORMAT_VERSION}; retrain the forest with this version")
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except (zipfile.BadZipFile, KeyError, ValueError) as err:
            raise ConfigError(f"{str(path)!r} holds no readable skops estimator ({err}); {hint}") from err
        refused = [t for t in untrusted if t.split(".", 1)[0] not in TRUSTED_MODULES]
        if refused:
            raise ConfigError(f"{str(path)!r} holds types outside {list(TRUSTED_MODULES)}: {refused}; "
                              f"refusing to load it. {hint}")
        forest = sio.load(path, trusted=untrusted)
        if not isinstance(forest, RandomForestClassifier):
            raise ConfigError(f"{str(path)!r} holds a {type(forest).__name__}, not a random forest; {hint}")
        # Already fitted: no grid search, so no grid, folds or ranking to set.
        model = cls(features=meta["features"], grid=None, cv=None, scoring=None, classes=meta["classes"],
                    image_size=meta["image_size"], resample=meta.get("resample"), **meta["params"])
        if model.feature_names != meta["feature_names"]:
            raise ConfigError(f"{str(path)!r} was trained on features {meta['feature_names']}, which this version "
                              f"computes differently; retrain the forest")
        model.forest, model.best_params, model._fitted = forest, meta["best_params"], True
        return model


def forest_score(model: ForestClassifier) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch -> p(REAL): the forest's features of the images, then its probabilities."""

    def score(images: np.ndarray) -> np.ndarray:
        features = extract_features(np.asarray(images), model.feature_set, **model.feature_params)
        return model.predict_proba_real(features).astype(np.float32)

    return score
