"""Scoring a test split or image files with a Scorer: the evaluation shared by train.py evaluate=true and
evaluate.py (workflow.py), a folder of one class (folder.py), predict.py's files and their output
(file_predictions.py)."""
