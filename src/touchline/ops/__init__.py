"""Running touchline in production: metrics, logs and request rate limits.

* :mod:`touchline.ops.metrics` — the Prometheus instruments, the queue-depth
  gauges read from the store, ``GET /metrics`` and the HTTP request middleware;
* :mod:`touchline.ops.logs` — one-line JSON or text logs, with secrets redacted;
* :mod:`touchline.ops.limits` — token buckets in front of the public endpoints.

This package imports nothing on its own, so ``touchline.config`` and the CLI
can take one of its modules without pulling in the others.
"""
