"""Numbers, figures and report files from arrays and images: metrics, calibration, robustness, test-time
augmentation, plots (the Grad-CAM figure among them), the evaluation report; no model runs here. Imports
only core/ and data/."""
