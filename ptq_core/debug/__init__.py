"""Quantization debug reports (docs/converter-lite.md §12): per-tensor statistics of the FP32 and the
dequantized quantized model round by round, converter_lite's CSVs with Parquet twins, a ranking of
the nodes quantization hurt most, and a self-contained HTML page."""
