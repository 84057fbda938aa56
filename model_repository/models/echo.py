"""Triton model `echo` (benchmark only): the searcher's inputs and outputs, answered
without work.

Each request gets the first `TOP_K` products of the catalog, built as the searcher builds
its responses (`common.ranked_response`), so what a client measures against it is the cost
of the transport alone: the client, gRPC, the server and the Python-backend round trip.
`make bench` serves it beside nothing else and reports it as the served rows' floor.
"""

from __future__ import annotations

import numpy as np

from shoprank import contract
from shoprank.core.catalog import CatalogIndex
from shoprank.core.scoring import Ranked
from shoprank.model_repository.models.common import (
    check_source,
    ranked_response,
    request_arrays,
    version_dir,
)


class TritonPythonModel:
    def initialize(self, args):
        check_source(args, "echo")
        self.catalog = CatalogIndex.load(version_dir(args) / contract.CATALOG_FILE)

    def execute(self, requests):
        return [ranked_response([self._answer(request_arrays(r))]) for r in requests]

    def _answer(self, arrays: dict) -> Ranked:
        top_k = arrays.get(contract.TOP_K.name)
        k = int(top_k.reshape(-1)[0]) if top_k is not None else contract.DEFAULT_TOP_K
        k = min(max(k, 0), len(self.catalog.product_ids))
        return Ranked(
            self.catalog.product_ids[:k], np.zeros(k, np.float32), self.catalog.titles[:k]
        )
