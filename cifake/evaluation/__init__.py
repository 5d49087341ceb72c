"""Scoring a test split or single images with a Scorer: the evaluation shared by train.py evaluate=true and
evaluate.py (workflow.py), predict.py's Grad-CAM PNG files (overlays.py)."""
