"""Numbers, figures and report files from arrays and images: metrics, calibration, robustness, test-time
augmentation, Grad-CAM, plots, the evaluation report. Imports only core/ and data/."""
