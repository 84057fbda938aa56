"""shoprank: e-commerce search ranking served by NVIDIA Triton.

The folders of the repository show the pipeline, and each is a subpackage of `shoprank`:

    training/          → shoprank.training          data, fine-tuning, fusion ranker, eval
    conversion/        → shoprank.conversion        ONNX export, parity, int8, TensorRT
    model_repository/  → shoprank.model_repository  the Triton repository and its server CLI
    loadtest/          → shoprank.loadtest          Locust against the gRPC endpoint
    bench/             → shoprank.bench             naive baselines vs the served pipeline
    client/            → shoprank_client            its own distribution (tritonclient + numpy)

This folder is the shared bottom layer, one job per sub-package:

    contract.py   the names, tensor specs, file names, config keys and ports all stages share
    configargs.py typed dataclass configs as command-line flags
    core/         the online core every serving process runs, torch-free: requests, tokenizer,
                  ONNX sessions, catalog, retrieval (ann, lexical), features, ranking, scoring,
                  recommender, filters, admission, the in-process pipeline
    models/       the torch model definitions: encoder, fusion ranker, sequential recommender,
                  the GPU serving path
    data/         offline data: the table schema, relevance metrics, stage-to-stage artifacts
    ops/          the embedded tritonserver process and the demo summary

Stages import that layer and only that: they hand each other files, never code, and the
serving path never loads torch (both checked statically by tests/test_layers.py).
"""
