"""The online core: everything a serving process runs, torch-free.

The Triton models (`model_repository/models/`), the in-process pipeline and the
benchmarks import only this package, `shoprank.contract` and numpy / ONNX Runtime / faiss /
tantivy: a serving stub never loads torch (tests/test_layers.py checks it statically).
"""
