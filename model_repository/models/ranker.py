"""Triton model `ranker`: query embedding + history ids → top-k products over the catalog.

One ONNX call scores the whole catalog for every request of the dynamic batch, so the
memory-bound scan of the item table is paid once per batch, not once per request.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from shoprank import contract
from shoprank.model_repository.models.common import input_array, invalid, parameters, version_dir
from shoprank.runtime import CatalogIndex, InvalidInput, cpu_session, rank, validate_top_k


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        folder = version_dir(args)
        self.session = cpu_session(
            folder / params["onnx_file"],
            threads=int(params["threads"]),
            providers=tuple(params["providers"].split(",")),
        )
        self.catalog = CatalogIndex.load(folder / params["catalog_file"])

    def execute(self, requests):
        responses: list = [None] * len(requests)
        ks, queries, histories, slots = [], [], [], []
        for i, request in enumerate(requests):
            try:
                ks.append(validate_top_k(input_array(request, contract.TOP_K.name).reshape(-1)[0]))
            except (InvalidInput, IndexError) as exc:
                responses[i] = invalid(str(exc) or f"{contract.TOP_K.name} is missing")
                continue
            queries.append(input_array(request, contract.QUERY_EMBEDDING.name).reshape(-1))
            histories.append(self.catalog.rows_of(input_array(request, contract.HISTORY.name)))
            slots.append(i)
        results = (
            rank(self.session, self.catalog, np.stack(queries), histories, ks) if slots else []
        )
        for i, (ids, scores, titles) in zip(slots, results, strict=True):
            responses[i] = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(contract.PRODUCT_IDS.name, ids[None, :]),
                    pb_utils.Tensor(contract.SCORES.name, scores[None, :]),
                    pb_utils.Tensor(contract.TITLES.name, titles[None, :]),
                ]
            )
        return responses
