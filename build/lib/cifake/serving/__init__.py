"""Serving: a LitServe API for any trained model file and a web page to drop images on.

:mod:`~cifake.serving.uploads` says what a request may hold and decodes its images exactly as
predict.py decodes files; :mod:`~cifake.serving.guard` refuses what LitServe would answer with a
500 (no key, wrong content type, too large, broken JSON); :mod:`~cifake.serving.api` is the
LitAPI, scoring through :mod:`cifake.scoring`; :mod:`~cifake.serving.server` puts them together
with the page (``page.html``, package data). The job that starts it: :mod:`cifake.jobs.serve`.
"""

from cifake.serving.api import DetectorAPI, ModelSettings, identity, open_model
from cifake.serving.guard import GuardSettings
from cifake.serving.server import build_server
from cifake.serving.uploads import Limits, Rejected, WarnAt

__all__ = ["DetectorAPI", "GuardSettings", "Limits", "ModelSettings", "Rejected", "WarnAt", "build_server", "identity",
           "open_model"]
