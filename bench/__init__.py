"""`python -m shoprank.bench`: naive PyTorch vs ONNX Runtime vs the Triton ensemble, one machine.

Modules, one idea each:

- `measure`     closed-loop load generation with warm-up and stable measurement windows
                (perf_analyzer's method), percentiles and throughput
- `naive`       the baseline a team ships first: PyTorch eager encoder + eager fusion ranker
- `http_server` that baseline behind FastAPI + uvicorn (JSON in/out, one worker)
- `systems`     one caller factory per benchmarked system (in-process, HTTP, Triton gRPC)
- `flops`       the encoder's FLOPs for a typical query and this machine's matmul peak
- `report`      ratios vs the naive baseline, targets, Markdown / CSV / PNG
"""
