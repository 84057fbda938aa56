"""Python client for the shoprank search ensemble served by Triton (gRPC)."""

from shoprank_client.search_client import (
    Filters,
    SearchClient,
    SearchError,
    SearchResult,
    ThrottledError,
)

__all__ = ["Filters", "SearchClient", "SearchError", "SearchResult", "ThrottledError"]
