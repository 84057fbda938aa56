"""Locust load test of the gRPC endpoint.

The names the runner (`loadtest.run`) and the locustfile share live here: the locustfile
itself cannot be imported elsewhere, because it patches grpc for gevent.
"""

URL_ENV = "SHOPRANK_GRPC_URL"  # target host:port
WORKLOAD_ENV = "SHOPRANK_WORKLOAD"  # path of a workload JSON file
# Written by the locustfile next to locust's own <prefix>_stats.csv, same format, at exit.
FINAL_STATS_SUFFIX = "_final_stats.csv"
