"""Fruits!: a PySpark pipeline that turns fruit photos into CNN features, PCA and a classifier."""

__version__ = "0.1.0"  # pyproject.toml reads it from here (`fruits --version`)
