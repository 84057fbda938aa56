"""Python client for the shoprank search ensemble served by Triton (gRPC)."""

from shoprank_client.search_client import SearchClient, SearchError, SearchResult

__all__ = ["SearchClient", "SearchError", "SearchResult"]
