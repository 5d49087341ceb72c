"""Lightning callbacks that draw the dashboards: curves, prediction grids, Grad-CAM."""

from cifake.callbacks.curves import CurvesCallback
from cifake.callbacks.gradcam import GradCAMCallback
from cifake.callbacks.predictions import PredictionGridCallback

__all__ = ["CurvesCallback", "GradCAMCallback", "PredictionGridCallback"]
