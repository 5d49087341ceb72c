"""Lightning callbacks: the dashboards (curves, prediction grids, Grad-CAM) and a log line per epoch."""

from cifake.callbacks.curves import CurvesCallback
from cifake.callbacks.epoch_log import EpochSummary
from cifake.callbacks.gradcam import GradCAMCallback
from cifake.callbacks.predictions import PredictionGridCallback

__all__ = ["CurvesCallback", "EpochSummary", "GradCAMCallback", "PredictionGridCallback"]
