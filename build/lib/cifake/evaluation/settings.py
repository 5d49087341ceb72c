"""The evaluation's settings as one typed object, read from the composed config once, in the job
(``evaluate.py``, and ``train.py`` for ``evaluate=true`` and what it chooses on validation), and checked
there: a wrong threshold, TTA, unsure band, temperature or out-of-scope fit is refused before a model is
opened. Every value is declared in ``conf/`` (conf/scoring/default.yaml, conf/evaluation/default.yaml,
conf/report/default.yaml, conf/evaluate.yaml); nothing here repeats one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from cifake.analysis.report import ReportSettings
from cifake.analysis.tta import check_tta
from cifake.core.errors import ConfigError
from cifake.models.precision import check_scoring_precision
from cifake.models.scope import METHODS as SCOPE_METHODS
from cifake.scoring.scorer import Scorer, check_band, check_threshold, parse_band

Limit = int | float | None  # trainer.limit_predict_batches: a share of the batches, a number of them, or all
UNSURE_CONDITIONS = ("clean", "trained")
# scored_split's values, and the stage each one is to score_split (cifake.evaluation.workflow)
SCORED_SPLITS = {"test": "test", "validation": "validate"}


def _plain(value: Any) -> Any:
    """A config node as plain Python (lists and dicts), anything else as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class ThresholdChoice:
    """``threshold_choice`` (conf/evaluate.yaml): a threshold chosen on the validation split by ``method``
    (``f1`` or ``precision``, see :func:`cifake.analysis.calibration.choose_threshold`) for the ``positive``
    class, reaching ``target_precision`` for ``precision``."""

    method: str
    positive: str
    target_precision: float | None


@dataclass(frozen=True)
class ScopeFit:
    """``out_of_scope_fit`` (conf/evaluation/default.yaml): the out-of-scope score fitted with ``method``
    (``None``: none) on ``images`` training images, its threshold leaving a share ``flagged`` of the
    validation images above it."""

    method: str | None
    images: int
    flagged: float

    @classmethod
    def from_config(cls, fit: Mapping[str, Any]) -> ScopeFit:
        """The ``out_of_scope_fit`` node, checked."""
        method = fit["method"] or None
        if method is not None and method not in SCOPE_METHODS:
            raise ConfigError(f"out_of_scope_fit.method={method!r}; choose one of {list(SCOPE_METHODS)} or null")
        if method is not None and int(fit["images"]) < 2:
            raise ConfigError(f"out_of_scope_fit.images={fit['images']}; fit the score on at least a few hundred "
                              "images")
        if method is not None and not 0.0 < float(fit["flagged"]) < 1.0:
            raise ConfigError(f"out_of_scope_fit.flagged={fit['flagged']} is the share of validation images above "
                              "the threshold, in (0, 1): e.g. 0.04")
        return cls(method=method, images=int(fit["images"]), flagged=float(fit["flagged"]))


@dataclass(frozen=True)
class EvaluationSettings:
    """How a model is scored and evaluated on the test split.

    ``threshold``, ``tta``, ``precision`` (``scoring.precision``) and ``out_of_scope``: how the model answers
    (conf/scoring/default.yaml). ``unsure_band``: ``"auto"`` (the model's own), ``None`` or ``(low, high)``
    around ``threshold`` (evaluate.py's ``unsure_band``; train.py has none: its band is chosen on validation).
    ``temperature`` (``calibration.temperature``): ``None``, ``"auto"`` or a number. ``unsure_precision``,
    ``unsure_conditions``, ``scope_fit``, ``scored_split``, ``exclude_leaks``, ``leak_near_distance``,
    ``robustness``: conf/evaluation/default.yaml. ``threshold_choice``: evaluate.py's, ``None`` when no method is set.
    ``limit``: ``trainer.limit_predict_batches``. ``report``: conf/report/default.yaml.
    """

    threshold: float
    tta: Mapping[str, Any]
    precision: str
    out_of_scope: str | float | None
    unsure_band: str | tuple[float, float] | None
    temperature: str | float | None
    unsure_precision: float | None
    unsure_conditions: str
    scope_fit: ScopeFit
    scored_split: str
    exclude_leaks: bool
    leak_near_distance: int | None
    robustness: bool
    threshold_choice: ThresholdChoice | None
    limit: Limit
    report: ReportSettings

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EvaluationSettings:
        """The settings of a composed ``train.py`` or ``evaluate.py`` config, checked: the threshold in [0, 1],
        a known TTA, a known precision, a band ``[low, high]`` around the threshold, a temperature that is
        ``null``, ``auto`` or a number, known unsure conditions and a sound out-of-scope fit."""
        threshold = float(cfg["threshold"])
        check_threshold(threshold)
        tta = dict(_plain(cfg["tta"]))
        check_tta(tta["mode"], int(tta["shift"]))
        temperature = cfg["calibration"]["temperature"]
        if temperature is not None and temperature != "auto":
            try:
                temperature = float(temperature)
            except (TypeError, ValueError):
                raise ConfigError(f"calibration.temperature={temperature!r}; use null, auto or a number > 0") from None
        scored_split = str(cfg["scored_split"])
        if scored_split not in SCORED_SPLITS:
            raise ConfigError(f"scored_split={scored_split!r}; choose one of {list(SCORED_SPLITS)}")
        if scored_split != "test" and cfg["exclude_leaks"]:
            raise ConfigError(f"exclude_leaks=true leaves out the test images that leak from train, and "
                              f"scored_split={scored_split} scores no test image: drop one of them")
        conditions = str(cfg["unsure_conditions"])
        if conditions not in UNSURE_CONDITIONS:
            raise ConfigError(f"unsure_conditions={conditions!r}; choose one of {list(UNSURE_CONDITIONS)}")
        # evaluate.py's own keys; train.py declares neither (it evaluates at `threshold`, with the band it chose)
        band = parse_band(_plain(cfg.get("unsure_band")), threshold)
        choice = cfg.get("threshold_choice")
        unsure_precision = cfg["unsure_precision"]
        return cls(threshold=threshold, tta=tta, precision=check_scoring_precision(str(cfg["scoring"]["precision"])),
                   out_of_scope=_plain(cfg["out_of_scope"]), unsure_band=band, temperature=temperature,
                   unsure_precision=None if unsure_precision is None else float(unsure_precision),
                   unsure_conditions=conditions, scope_fit=ScopeFit.from_config(cfg["out_of_scope_fit"]),
                   scored_split=scored_split,
                   exclude_leaks=bool(cfg["exclude_leaks"]), leak_near_distance=cfg["leak_near_distance"],
                   robustness=bool(cfg["robustness"]),
                   threshold_choice=None if choice is None or not choice["method"] else ThresholdChoice(
                       method=str(choice["method"]), positive=str(choice["positive"]),
                       target_precision=choice["target_precision"]),
                   limit=cfg["trainer"]["limit_predict_batches"], report=ReportSettings.from_config(cfg["report"]))

    @property
    def chooses(self) -> bool:
        """Whether anything is chosen on validation to be stored with the model: an unsure band, a
        temperature or an out-of-scope score."""
        return bool(self.unsure_precision or self.temperature is not None or self.scope_fit.method)

    def band_for(self, scorer: Scorer) -> tuple[float, float] | None:
        """The unsure band to answer with: for ``unsure_band=auto`` the one recorded with ``scorer``'s model
        (none if it has none; it must contain ``threshold``), else the band set (checked already)."""
        if self.unsure_band == "auto":
            return check_band(scorer.unsure_band, self.threshold)
        assert not isinstance(self.unsure_band, str)
        return self.unsure_band
