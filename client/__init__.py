"""Python client for the shoprank search ensemble served by Triton (gRPC)."""

from client.search_client import SearchClient, SearchError, SearchResult

__all__ = ["SearchClient", "SearchError", "SearchResult"]
