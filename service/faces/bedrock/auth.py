"""Who may call the Bedrock face, and for which tenant.

- SigV4 against `bedrock_access_keys`: each access key acts for its configured tenant
  ("default" for a bare secret). The expected signature is recomputed with botocore's
  own `SigV4Auth` from the request as received (method, raw path, raw query, the headers
  the caller signed, the body) and compared in constant time.
- `Authorization: Bearer <token>` (AWS_BEARER_TOKEN_BEDROCK): a tuneforge API key acts
  for its tenant; a token from `bedrock_bearer_tokens` for tenant "default".
- Development mode: with authentication off service-wide (service/auth/tenants.py) and
  no Bedrock keys or tokens configured, every caller is tenant "default";
  `bedrock_dev_mode_any_signature` (loopback only, enforced by `Settings`) accepts any
  signature for tenant "default" even with keys configured.

The caller's `TenantPolicy` (after its tenant's rate limit) is left in
`request.state.tenant_policy` for the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.auth.limits import TenantPolicy, TokenBuckets
from service.auth.tenants import DEFAULT_TENANT, Access
from service.faces.bedrock.errors import AccessDeniedException, ThrottlingException
from service.settings import BedrockAccessKey, Settings

SERVICE_NAME = "bedrock"
MAX_CLOCK_SKEW_SECONDS = 15 * 60
_SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


class _Verifier(SigV4Auth):
    """SigV4Auth whose header set is exactly the one the caller says it signed."""

    def __init__(self, credentials: Credentials, region: str, signed: HTTPHeaders) -> None:
        super().__init__(credentials, SERVICE_NAME, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed


class _RateLimiter:
    """A token bucket per caller, in this replica's memory (the Bedrock face's own rate,
    TUNEFORGE_BEDROCK_REQUESTS_PER_SECOND, over the tenants' buckets)."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets = TokenBuckets()

    def take(self, caller: str) -> bool:
        if self.per_second <= 0:
            return True
        return self._buckets.take(caller, self.per_second, self.burst) <= 0


class Authenticator:
    def __init__(self, settings: Settings, access: Access | None, state_bucket: str) -> None:
        self.settings = settings
        self.access = access
        self.state_bucket = state_bucket
        self.limiter = _RateLimiter(settings.bedrock_requests_per_second, settings.bedrock_burst)

    @property
    def development_mode(self) -> bool:
        """No credential of any kind configured: everyone is tenant "default"."""
        return (
            (self.access is None or not self.access.enabled)
            and not self.settings.bedrock_access_keys
            and not self.settings.bedrock_bearer_tokens
        )

    async def __call__(self, request: Request) -> None:
        body = await request.body()  # cached by Starlette for the handler
        # Reading an API key may read the store (cached briefly): not on the event loop.
        caller, tenant = await run_in_threadpool(self.caller, request, body)
        if not self.limiter.take(caller):
            raise ThrottlingException("Too many requests, please wait before trying again.")
        if self.access is None:
            policy = TenantPolicy.unlimited(tenant, self.state_bucket)
        else:
            policy = self.access.admit(tenant)  # TooManyRequests: ThrottlingException
        request.state.tenant_policy = policy

    def caller(self, request: Request, body: bytes) -> tuple[str, str]:
        """(who, for the per-caller rate limit; the tenant they act for)."""
        header = request.headers.get("authorization", "")
        if self.settings.bedrock_dev_mode_any_signature or self.development_mode:
            match = _SIGV4.match(header)
            return (match.group("credential").split("/")[0] if match else "dev"), DEFAULT_TENANT
        if not header:
            raise AccessDeniedException(
                "Missing Authentication Token: sign the request with SigV4 (service "
                "'bedrock') or send Authorization: Bearer <token>"
            )
        if header.startswith("Bearer "):
            client = request.client.host if request.client is not None else ""
            return self._bearer(header[len("Bearer ") :].strip(), client)
        match = _SIGV4.match(header)
        if match is None:
            raise AccessDeniedException("Authorization header is not a SigV4 or bearer one")
        return self._sigv4(request, body, match)

    def _bearer(self, token: str, client: str) -> tuple[str, str]:
        caller = "bearer:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        for known in self.settings.bedrock_bearer_tokens:
            if hmac.compare_digest(known.get_secret_value().encode(), token.encode()):
                return caller, DEFAULT_TENANT
        tenant = None
        if self.access is not None:
            if self.access.keys.is_unknown(token) and not self.access.keys.knows_now(token):
                self.access.check_unknown_key_lookup(client)  # ThrottlingException past it
            tenant = self.access.keys.tenant_of(token)
        if tenant is not None:
            return caller, tenant
        raise AccessDeniedException("The bearer token included in the request is invalid.")

    def _sigv4(self, request: Request, body: bytes, match: re.Match[str]) -> tuple[str, str]:
        parts = match.group("credential").split("/")
        if len(parts) != 5 or parts[3] != SERVICE_NAME or parts[4] != "aws4_request":
            raise AccessDeniedException(
                "Credential should be scoped to a valid service: 'bedrock' and end in "
                "'aws4_request'."
            )
        access_key, date, region = parts[0], parts[1], parts[2]
        configured = self.settings.bedrock_access_keys.get(access_key)
        if configured is None:
            raise AccessDeniedException("The security token included in the request is invalid.")
        if isinstance(configured, BedrockAccessKey):
            secret, tenant = configured.secret, configured.tenant
        else:
            secret, tenant = configured, DEFAULT_TENANT
        amz_date = request.headers.get("x-amz-date", "")
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise AccessDeniedException("X-Amz-Date is missing or malformed.") from None
        if not amz_date.startswith(date):
            raise AccessDeniedException("The credential date does not match X-Amz-Date.")
        if abs((datetime.now(UTC) - signed_at).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
            raise AccessDeniedException(
                "Signature expired: X-Amz-Date is more than 15 minutes off."
            )
        names = match.group("signed").split(";")
        if "host" not in names:
            raise AccessDeniedException("The host header must be signed.")
        signed = HTTPHeaders()
        for name in names:
            values = request.headers.getlist(name)
            if not values:
                raise AccessDeniedException(f"Signed header {name!r} is missing.")
            signed[name] = ",".join(values)

        query = request.scope.get("query_string", b"").decode("latin-1")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        url = f"{request.url.scheme}://{request.headers['host']}{raw_path.decode('latin-1')}"
        received = AWSRequest(method=request.method, url=url + (f"?{query}" if query else ""))
        received.data = body
        for name in names:
            received.headers[name] = signed[name]
        received.context["timestamp"] = amz_date
        verifier = _Verifier(Credentials(access_key, secret.get_secret_value()), region, signed)
        canonical = verifier.canonical_request(received)
        expected = verifier.signature(verifier.string_to_sign(received, canonical), received)
        if not hmac.compare_digest(expected.encode(), match.group("signature").encode()):
            raise AccessDeniedException(
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method."
            )
        return access_key, tenant


def authenticator_for(request: Request) -> Authenticator:
    """One authenticator (and rate limiter) per application, made on first use."""
    state = request.app.state
    found: Authenticator | None = getattr(state, "bedrock_authenticator", None)
    if found is None:
        context = request.app.state.context
        found = Authenticator(context.settings, context.access, context.store.bucket)
        state.bedrock_authenticator = found
    return found


async def authenticate(request: Request) -> None:
    await authenticator_for(request)(request)


def tenant_policy(request: Request) -> TenantPolicy:
    """The caller's policy, as `authenticate` left it (it runs before every route)."""
    policy: TenantPolicy = request.state.tenant_policy
    return policy
