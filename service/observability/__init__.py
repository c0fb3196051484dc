"""Observability: Prometheus metrics, structured logs, request ids."""
