"""Scion's training package: config schema, model and data loading, the training run."""
