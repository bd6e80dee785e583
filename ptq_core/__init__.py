"""Pure-NumPy core of ptqflow: config, ONNX graph layer, quantizers, encodings, metrics.

Nothing here imports Prefect or Dask, so every piece is usable (and testable) on its own.
"""

__version__ = "0.1.0"
