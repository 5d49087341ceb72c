"""Scoring a test split or single images with a Scorer: the evaluation shared by train.py evaluate=true and
evaluate.py (workflow.py), Grad-CAM overlays for predict.py and the server (overlays.py)."""
