"""ptqflow: post-training quantization of ONNX models with converter_lite configs, as Prefect flows."""

from ptqflow import _env

_env.apply_defaults()

__version__ = "0.1.0"
