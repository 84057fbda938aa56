"""The served encoder and dense scan in PyTorch, for hosts with CUDA (`gpu-embedded` target).

The embedded `tritonserver` of nvidia-pytriton has only the Python backend: no TensorRT,
no ONNX Runtime GPU. On a GPU host the Python-backend models therefore run the same
sentence-transformers encoder that training saved (`encoder.SentenceEmbedder`, so pooling
and normalisation cannot drift from the CPU path) in PyTorch:

- `TorchEncoder`: fp16 (or bf16/fp32) weights; each call is padded up to a (batch,
  sequence) bucket and replayed from a CUDA graph captured once per bucket. At batch 1 a
  MiniLM-L6 forward is bound by kernel launches, not arithmetic, which is what graphs
  remove. Padding is masked, so buckets do not change the embeddings. Same
  `run(output_names, feeds)` call as an ONNX Runtime session, so the Triton model and
  `sessions.encode_requests` use either.
- `TorchDenseIndex`: the exact scan + top-k over the catalog embeddings on the device,
  with the `search`/`vectors` of `ann.DenseIndex` (the ranker gathers candidate vectors
  from a host copy).

On a host without CUDA both run on the CPU (eager, no graphs): that is how the tests build
and serve the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shoprank import contract

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SEQUENCE_BUCKETS = (16, 32, 64, 128)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket holding n, or None beyond the largest (run eagerly)."""
    return next((b for b in buckets if b >= n), None)


def device_of(kind: str, device_id: int | str = 0) -> torch.device:
    """The torch device of a Triton model instance (`model_instance_kind`, `..._device_id`)."""
    if kind.upper() == "GPU" and torch.cuda.is_available():
        return torch.device(f"cuda:{int(device_id)}")
    return torch.device("cpu")


class TorchEncoder:
    """(input_ids, attention_mask) → L2-normalised embeddings, (B, D) float32 on the host."""

    def __init__(
        self,
        encoder_dir: Path,
        device: torch.device | str = "cpu",
        dtype: str = "float16",
        graphs: bool = True,
    ) -> None:
        from shoprank.models.encoder import SentenceEmbedder, load_encoder

        self.device = torch.device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        # fp16 matmuls are slow or missing on CPUs: there the encoder stays fp32.
        self.dtype = DTYPES[dtype] if self.device.type == "cuda" else torch.float32
        self.module = SentenceEmbedder(load_encoder(encoder_dir)).eval()
        self.module.to(self.device, self.dtype)
        self.use_graphs = graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple] = {}

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, L) int64 ids and mask → (B, D) float32."""
        b, length = input_ids.shape
        rows, cols = bucket(b, BATCH_BUCKETS), bucket(length, SEQUENCE_BUCKETS)
        if rows is None or cols is None:
            return self._eager(input_ids, attention_mask)
        ids = np.zeros((rows, cols), np.int64)
        mask = np.zeros((rows, cols), np.int64)
        ids[:b, :length], mask[:b, :length] = input_ids, attention_mask
        mask[b:, 0] = 1  # padding rows attend to one token: no empty softmax
        if not self.use_graphs:
            return self._eager(ids, mask)[:b]
        static_ids, static_mask, out, graph = self._graph(rows, cols)
        static_ids.copy_(torch.from_numpy(ids), non_blocking=True)
        static_mask.copy_(torch.from_numpy(mask), non_blocking=True)
        graph.replay()
        return out[:b].float().cpu().numpy()

    def _eager(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.module(
            torch.from_numpy(np.ascontiguousarray(ids)).to(self.device),
            torch.from_numpy(np.ascontiguousarray(mask)).to(self.device),
        )
        return out.float().cpu().numpy()

    def _graph(self, rows: int, cols: int) -> tuple:
        """Static inputs, output and the CUDA graph of one bucket, captured on first use."""
        if (rows, cols) not in self._graphs:
            ids = torch.zeros((rows, cols), dtype=torch.int64, device=self.device)
            mask = torch.ones((rows, cols), dtype=torch.int64, device=self.device)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up runs off the capture stream
                for _ in range(3):
                    self.module(ids, mask)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.module(ids, mask)
            self._graphs[(rows, cols)] = (ids, mask, out, graph)
        return self._graphs[(rows, cols)]

    def warm_up(self) -> None:
        """Capture every bucket now, so no request pays for a capture (CUDA only)."""
        if not self.use_graphs:
            return
        for rows in BATCH_BUCKETS:
            for cols in SEQUENCE_BUCKETS:
                ids = np.zeros((rows, cols), np.int64)
                self.embed(ids, np.ones_like(ids))

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The ONNX Runtime session call, so `sessions.encode_requests` takes either."""
        return [self.embed(feeds[contract.ONNX_INPUT_IDS], feeds[contract.ONNX_ATTENTION_MASK])]


class TorchDenseIndex:
    """The exact inner-product scan on a torch device (see module docstring)."""

    def __init__(
        self, embeddings: np.ndarray, device: torch.device | str = "cpu", dtype: str = "float16"
    ) -> None:
        self.host = np.ascontiguousarray(embeddings, dtype=np.float32)  # (N, D)
        self.device = torch.device(device)
        kind = DTYPES[dtype] if self.device.type == "cuda" else torch.float32
        self.matrix = torch.from_numpy(self.host).to(self.device, kind)  # (N, D)

    @property
    def size(self) -> int:
        return self.host.shape[0]

    @property
    def dim(self) -> int:
        return self.host.shape[1]

    @torch.inference_mode()
    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows (B, k) int64, scores (B, k) float32), best first (`threads`: accepted as
        `DenseIndex.search` takes it; the scan runs on the GPU)."""
        q = torch.from_numpy(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32))
        k = max(1, min(int(k), self.size))
        scores = q.to(self.device, self.matrix.dtype) @ self.matrix.T  # (B, N)
        top = torch.topk(scores.float(), k, dim=1)
        return top.indices.cpu().numpy().astype(np.int64), top.values.cpu().numpy()

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of `rows`, (len, D), from the host copy."""
        return self.host[np.asarray(rows, dtype=np.int64).reshape(-1)]
