"""Triton Python-backend models, copied into the generated repository as `<model>/1/model.py`.

Each keeps `initialize`/`execute` thin: tensors in, `model_repository.ops` does the work,
tensors out. `triton_python_backend_utils` exists only inside the Triton stub.
"""
