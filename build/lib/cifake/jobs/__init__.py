"""The jobs behind the entry scripts and console scripts, one module each: train, evaluate,
predict, export, audit. A job composes the layers below it and never imports another job."""
