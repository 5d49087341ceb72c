"""Fitting: the Lightning Trainer and its device and precision rules, distributed training, sweeps, run
tracking, the random-forest fit. Imports core/, data/, analysis/, models/."""
