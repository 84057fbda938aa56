"""Locust load test of the gRPC endpoint.

The names the runner (`loadtest.run`) and the locustfile share live here: the locustfile
itself cannot be imported elsewhere, because it patches grpc for gevent.
"""

from shoprank.contract import ENSEMBLE_MODEL

URL_ENV = "SHOPRANK_GRPC_URL"  # target host:port
WORKLOAD_ENV = "SHOPRANK_WORKLOAD"  # path of a workload JSON file
# The client's retries on UNAVAILABLE / RESOURCE_EXHAUSTED (unset: the client's default);
# 0 shows every refusal of an overloaded server as a failure, with its own latency.
RETRIES_ENV = "SHOPRANK_RETRIES"
# Requests per second per user (unset: closed loop, each user sends its next request as soon
# as the last is answered). With a rate, N users offer N × rate req/s whatever the server
# answers: how "4× the load the server can sustain" is offered.
USER_RPS_ENV = "SHOPRANK_USER_RPS"
# Written by the locustfile next to locust's own <prefix>_stats.csv, same format, at exit.
FINAL_STATS_SUFFIX = "_final_stats.csv"
# Locust's name for requests refused for overload (after the client's retries), kept apart
# from the answered ones so their percentiles do not mix.
REFUSED_NAME = f"{ENSEMBLE_MODEL} (refused)"
# Dropped by the client's adaptive throttle without being sent (not counted as refused).
THROTTLED_NAME = f"{ENSEMBLE_MODEL} (throttled)"
# The client's adaptive-throttling k (unset: the client's default; 0 turns it off).
THROTTLE_ENV = "SHOPRANK_THROTTLE_K"
# Every request's end time (Unix s), name, latency (ms) and outcome, as CSV, written by the
# locustfile at exit when set: to look at one window of a run (a deploy, a fault).
REQUEST_LOG_ENV = "SHOPRANK_REQUEST_LOG"
REQUEST_LOG_COLUMNS = ("time", "name", "ms", "ok")
