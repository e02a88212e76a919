"""Fruits!: a PySpark pipeline that turns fruit photos into CNN features, PCA and a classifier."""

__version__ = "0.1.0"
