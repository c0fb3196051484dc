"""Observability: Prometheus metrics, structured logs, request ids (issue 7)."""
