"""AWS Signature Version 4 for plain S3 object GETs, PUTs and listings (no I/O).

`ObjectStore` reads and writes small documents (a job's status, its control, its
events) on every describe, list, create and reconcile pass. Through botocore each call
costs 1.5-3.5 ms of CPU (event hooks, request model, XML/timestamp parsing); most of
that is not needed to sign and send one request. This signs the one request shape
those calls use - path-style `/bucket/key`, or `/bucket?query` for a listing - as SigV4
defines it (host, payload hash and date signed; other headers such as If-Match may ride
unsigned), so any S3 endpoint that checks SigV4 accepts it (SeaweedFS enforcing
credentials included).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SIGNED_PLAIN = "host;x-amz-content-sha256;x-amz-date"
_SIGNED_TOKEN = "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class Signer:
    """Signs requests to one host and region; the day's signing key is cached (it
    depends only on the secret, the date, the region and the service)."""

    def __init__(self, host: str, region: str) -> None:
        self.host = host
        self.region = region
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = _hmac(("AWS4" + secret).encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        self._key = (secret, day, key)
        return key

    def headers(
        self,
        method: str,
        path: str,
        credentials: Credentials | None,
        *,
        query: str = "",
        payload_sha256: str = EMPTY_SHA256,
        now: float | None = None,
    ) -> dict[str, str]:
        """The headers of `method path?query` (both already encoded: `canonical_path`,
        `canonical_query`) with a body of that SHA-256; unsigned when there are no
        credentials (an anonymous store)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        headers = {"Host": self.host, "X-Amz-Content-SHA256": payload_sha256, "X-Amz-Date": stamp}
        if credentials is None:
            return headers
        day = stamp[:8]
        canonical_headers = (
            f"host:{self.host}\nx-amz-content-sha256:{payload_sha256}\nx-amz-date:{stamp}\n"
        )
        signed = _SIGNED_PLAIN
        if credentials.token:
            headers["X-Amz-Security-Token"] = credentials.token
            canonical_headers += f"x-amz-security-token:{credentials.token}\n"
            signed = _SIGNED_TOKEN
        canonical_request = (
            f"{method}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload_sha256}"
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
            + hashlib.sha256(canonical_request.encode()).hexdigest()
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return headers


def canonical_path(prefix: str, bucket: str, key: str) -> str:
    """`prefix/bucket/key` URI-encoded as S3 signs it: every byte but unreserved ones
    and `/` percent-encoded, once (S3 does not double-encode the path). No key: the
    bucket itself (a listing)."""
    return quote(f"{prefix}/{bucket}/{key}" if key else f"{prefix}/{bucket}", safe="/~")


def canonical_query(parameters: dict[str, str]) -> str:
    """The query string as SigV4 signs it (and as it must be sent): names sorted, names
    and values percent-encoded but for unreserved characters."""
    return "&".join(
        f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
        for name, value in sorted(parameters.items())
    )
