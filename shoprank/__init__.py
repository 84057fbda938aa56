"""shoprank: e-commerce search ranking served by NVIDIA Triton.

The folders of the repository show the pipeline, and each is a subpackage of `shoprank`:

    training/          → shoprank.training          data, fine-tuning, fusion ranker, eval
    conversion/        → shoprank.conversion        ONNX export, parity, int8, TensorRT
    model_repository/  → shoprank.model_repository  the Triton repository and its server CLI
    loadtest/          → shoprank.loadtest          Locust against the gRPC endpoint
    bench/             → shoprank.bench             naive baselines vs the served pipeline
    client/            → shoprank_client            its own distribution (tritonclient + numpy)

The modules directly in this folder are the shared bottom layer: the contract (names,
paths, tensor specs), data schema, metrics, the encoder and fusion-ranker definitions,
the run-time ops the served models and the in-process pipeline share, and the server
process helper. Stages import that layer and only that: they hand each other files,
never code (checked by tests/test_layers.py).
"""
