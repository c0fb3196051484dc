"""Whole-object GETs and PUTs without botocore's per-call machinery, for `ObjectStore`
only (jobstore/storage.py stays the one entry point to the store).

Each botocore call costs 1.5-3.5 ms of CPU; these are signed by jobstore/sigv4.py and
sent over a pooled urllib3 connection. Only the common answers are handled here: a GET's
200 (the object) and 404 NoSuchKey (None), a PUT's 200 (the new ETag) and, for a
conditional PUT, 412/409 (`ConditionFailed`). Anything else - a transport error, 5xx,
403, a redirect, a missing bucket - raises `NotHandled`, and `ObjectStore` makes the
call again through botocore, which retries with backoff and maps the outcome to the
same errors as before. Every request is reported to the store's call observers
(metrics) like botocore's calls, with its error when it was handed on.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import urllib3
from botocore.httpsession import DEFAULT_CA_BUNDLE

from jobstore.sigv4 import Credentials, Signer, canonical_path, canonical_query

Observer = Callable[[str, float, str | None], None]


@dataclass
class ListPage:
    """One ListObjectsV2 page: objects (key, size, etag), common prefixes, and whether
    more keys follow."""

    objects: list[dict[str, Any]]
    prefixes: list[str]
    truncated: bool


class NotHandled(Exception):
    """The direct request got an answer it does not interpret: ask botocore."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class ConditionFailed(Exception):
    """A conditional PUT lost (412, or 409 for a concurrent conditional write)."""


class DirectS3:
    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        observers: list[Observer],
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        parts = urlsplit(endpoint_url)
        default_port = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        if parts.port is not None and parts.port != default_port:
            host = f"{host}:{parts.port}"
        self._base = f"{parts.scheme}://{host}"
        self._prefix = parts.path.rstrip("/")
        self._signer = Signer(host, region)
        # botocore's credentials object: refreshed by botocore where it is refreshable.
        self._credentials = credentials
        self._observers = observers  # the store's list: observers added later count too
        tls: dict[str, Any] = {}
        if parts.scheme == "https":  # verified against the bundle botocore would use
            ca_bundle = os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_bundle}
        self._pool = urllib3.PoolManager(
            maxsize=64,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            **tls,
        )
        # The one endpoint's pool, kept: PoolManager.request would parse the URL and
        # look the pool up again on every call (a measurable part of a describe's CPU).
        self._endpoint_pool = self._pool.connection_from_url(self._base)

    @classmethod
    def for_client(
        cls,
        client: Any,
        session: Any,
        observers: list[Observer],
        connect_timeout: float,
        read_timeout: float,
    ) -> DirectS3 | None:
        """Direct requests to this botocore client's endpoint, or None where they must
        not be used: an HTTP(S) proxy in the environment (botocore honours it, these
        would not)."""
        endpoint_url = str(client.meta.endpoint_url)
        parts = urlsplit(endpoint_url)
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            return None
        return cls(
            endpoint_url,
            str(client.meta.region_name),
            session.get_credentials(),
            observers,
            connect_timeout,
            read_timeout,
        )

    def get(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(body, etag), or None when there is no such key."""
        with self._observed("GetObject") as outcome:
            response = self._request("GET", bucket, key, b"", {}, outcome)
            if response.status == 200:
                etag = response.headers.get("ETag")
                if etag is not None:
                    return response.data, etag
            elif response.status == 404 and b"<Code>NoSuchKey</Code>" in response.data:
                return None
            outcome.fail(str(response.status))
        raise AssertionError("unreachable")  # `fail` raises

    def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        *,
        content_type: str,
        if_none_match: bool,
        if_match: str | None,
    ) -> str:
        """Write the object; return its new ETag. A lost condition: `ConditionFailed`."""
        headers = {"Content-Type": content_type}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = if_match
        conditional = if_none_match or if_match is not None
        with self._observed("PutObject") as outcome:
            response = self._request("PUT", bucket, key, body, headers, outcome)
            if response.status == 200:
                etag = response.headers.get("ETag")
                if etag is not None:
                    return str(etag)
            elif conditional and response.status in (409, 412):
                outcome.error = str(response.status)
                raise ConditionFailed(f"s3://{bucket}/{key}")
            outcome.fail(str(response.status))
        raise AssertionError("unreachable")

    def list_page(
        self,
        bucket: str,
        prefix: str,
        *,
        start_after: str | None,
        delimiter: str | None = None,
        max_keys: int = 1000,
    ) -> ListPage:
        """One page of keys under `prefix` after `start_after` (the caller pages on with
        the last key). Keys come URL-encoded (`encoding-type=url`, as botocore asks),
        so any key survives the XML."""
        parameters = {
            "list-type": "2",
            "prefix": prefix,
            "encoding-type": "url",
            "max-keys": str(max_keys),
        }
        if start_after:
            parameters["start-after"] = start_after
        if delimiter:
            parameters["delimiter"] = delimiter
        with self._observed("ListObjectsV2") as outcome:
            query = canonical_query(parameters)
            response = self._request("GET", bucket, "", b"", {}, outcome, query=query)
            if response.status != 200:
                outcome.fail(str(response.status))
            try:
                return _parse_list(response.data)
            except (ElementTree.ParseError, ValueError, KeyError) as error:
                outcome.fail("BadListing", error)
        raise AssertionError("unreachable")

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        body: bytes,
        headers: dict[str, str],
        outcome: _Outcome,
        *,
        query: str = "",
    ) -> urllib3.BaseHTTPResponse:
        frozen = None if self._credentials is None else self._credentials.get_frozen_credentials()
        credentials = (
            None
            if frozen is None or frozen.access_key is None
            else Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        )
        path = canonical_path(self._prefix, bucket, key)
        payload = hashlib.sha256(body).hexdigest()
        headers.update(
            self._signer.headers(method, path, credentials, query=query, payload_sha256=payload)
        )
        try:
            return self._endpoint_pool.urlopen(
                method,
                path + (f"?{query}" if query else ""),
                body=body or None,
                headers=headers,
                redirect=False,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as error:
            outcome.fail(type(error).__name__, error)
            raise AssertionError("unreachable") from error

    def _observed(self, operation: str) -> _Outcome:
        return _Outcome(operation, self._observers)


def _parse_list(document: bytes) -> ListPage:
    root = ElementTree.fromstring(document)
    # The S3 namespace, or none: some S3-compatible stores leave it out.
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{ns}ListBucketResult":
        raise ValueError(f"not a listing: {root.tag}")
    encoded = root.findtext(f"{ns}EncodingType") == "url"

    def decoded(value: str) -> str:
        return unquote_plus(value) if encoded else value

    objects = [
        {
            "key": decoded(item.findtext(f"{ns}Key") or ""),
            "size": int(item.findtext(f"{ns}Size") or "0"),
            "etag": item.findtext(f"{ns}ETag") or "",
        }
        for item in root.iter(f"{ns}Contents")
    ]
    prefixes = [
        decoded(item.findtext(f"{ns}Prefix") or "") for item in root.iter(f"{ns}CommonPrefixes")
    ]
    truncated = root.findtext(f"{ns}IsTruncated") == "true"
    return ListPage(objects, prefixes, truncated)


class _Outcome:
    """Times one request and reports it to the observers when it ends."""

    def __init__(self, operation: str, observers: list[Observer]) -> None:
        self.operation = operation
        self.observers = observers
        self.error: str | None = None
        self.started = 0.0

    def fail(self, error: str, cause: Exception | None = None) -> None:
        self.error = error
        raise NotHandled(error) from cause

    def __enter__(self) -> _Outcome:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self.started
        for observer in self.observers:
            observer(self.operation, elapsed, self.error)
