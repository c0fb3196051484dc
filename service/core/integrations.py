"""Checks on a job's `integrations` at create: today, MLflow tracking.

A job may ask its trainer to log to an MLflow tracking server
(`integrations.mlflow.trackingUri`). The trainer then opens HTTP connections from inside
the cluster to that URI, so the operator decides which hosts are allowed
(TUNEFORGE_MLFLOW_ALLOWED_HOSTS); with none allowed, any job asking for MLflow is
refused. A refused create writes nothing and names the field at fault.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from service.errors import InvalidArgument

MLFLOW_URI_FIELD = "integrations.mlflow.trackingUri"


def check_mlflow_tracking_uri(uri: str, allowed_hosts: Collection[str]) -> str:
    """Return `uri` if a trainer may log to it; raise InvalidArgument naming the field."""
    field = MLFLOW_URI_FIELD
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"{field} must be an http:// or https:// URL of an MLflow tracking server",
            field=field,
        )
    if parts.username or parts.password:
        raise InvalidArgument(f"{field} must not carry credentials", field=field)
    if parts.query or parts.fragment:
        raise InvalidArgument(f"{field} must not have a query or fragment", field=field)
    if not allowed_hosts:
        raise InvalidArgument(
            f"{field}: this server logs to no MLflow server (the operator allowed no hosts; "
            "TUNEFORGE_MLFLOW_ALLOWED_HOSTS)",
            field=field,
        )
    host = parts.hostname.lower()
    if host not in {allowed.lower() for allowed in allowed_hosts}:
        raise InvalidArgument(
            f"{field}: host {host!r} is not an MLflow server this service may log to; "
            f"allowed: {', '.join(sorted(allowed_hosts))}",
            field=field,
        )
    return uri
