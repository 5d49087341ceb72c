"""Lightning callbacks: the dashboards (curves, prediction grids, Grad-CAM), a log line per epoch, EMA weights, a
whitened first convolution and a clean stop on preemption."""

from cifake.callbacks.curves import CurvesCallback
from cifake.callbacks.ema import EMA
from cifake.callbacks.epoch_log import EpochSummary
from cifake.callbacks.gradcam import GradCAMCallback
from cifake.callbacks.predictions import PredictionGridCallback
from cifake.callbacks.preemption import Preemption
from cifake.callbacks.whiten import PatchWhitening

__all__ = ["EMA", "CurvesCallback", "EpochSummary", "GradCAMCallback", "PatchWhitening", "PredictionGridCallback",
           "Preemption"]
