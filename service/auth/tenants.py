"""Who is calling: an API key -> its tenant, with that tenant's limits. Transport-free.

Each face takes its credential (REST: `Authorization: Bearer <key>`; gRPC: the
`authorization` metadata, same form; Bedrock: SigV4 keys from settings, or an API key
as a bearer token), asks `Access` for the caller's `TenantPolicy`, and passes the tenant
to the core, which scopes every read and write to it.

Authentication is on when the operator set an admin key or any API key exists in the
store; otherwise the service is in development mode: every caller is tenant
"default", and `check_bind` lets it start only on loopback addresses.
"""

from __future__ import annotations

import hmac
import logging
import math

from service.auth.keys import KeyStore
from service.auth.limits import RequestRate, TenantPolicy, TokenBuckets
from service.errors import AuthConfigurationError, TooManyRequests, Unauthenticated
from service.settings import Settings, _is_loopback

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Access:
    def __init__(self, settings: Settings, keys: KeyStore, *, enabled: bool) -> None:
        self.settings = settings
        self.keys = keys
        self.enabled = enabled
        self.rate = RequestRate()
        # Per client address: lookups of API key ids this replica has never seen exist,
        # each a store read (service/auth/keys.py), before any is made.
        self.unknown_keys = TokenBuckets()

    @classmethod
    def start(cls, settings: Settings, keys: KeyStore) -> Access:
        """Decide whether authentication is on, refuse an open non-loopback bind, say so."""
        enabled = settings.admin_key is not None or keys.any_exist()
        if not enabled:
            exposed = [
                f"{name} {host}"
                for name, host in (("REST", settings.rest_host), ("gRPC", settings.grpc_host))
                if not _is_loopback(host)
            ]
            if exposed:
                raise AuthConfigurationError(
                    "authentication is off (no TUNEFORGE_ADMIN_KEY and no API keys in the "
                    f"store) but {' and '.join(exposed)} is not a loopback address; set "
                    "TUNEFORGE_ADMIN_KEY and create keys with `tuneforge keys create`, or "
                    "listen on 127.0.0.1"
                )
            log.warning(
                "authentication is OFF (development mode: no API keys configured and bound "
                "to loopback only); every caller is tenant '%s'",
                DEFAULT_TENANT,
            )
        else:
            log.info("authentication is on: API keys required on REST, gRPC and Bedrock")
            if "*" in (settings.allowed_buckets or []):
                log.warning(
                    "TUNEFORGE_ALLOWED_BUCKETS grants '*': every tenant may name any bucket "
                    "(but the state bucket) for its data, models and outputs"
                )
            for tenant, grants in sorted(settings.tenant_allowed_buckets.items()):
                if "*" in grants:
                    log.warning(
                        "TUNEFORGE_TENANT_ALLOWED_BUCKETS grants '*' to tenant %s: it may name "
                        "any bucket (but the state bucket)",
                        tenant,
                    )
        return cls(settings, keys, enabled=enabled)

    def policy(self, tenant: str) -> TenantPolicy:
        return TenantPolicy.of(self.settings, tenant, authenticated=self.enabled)

    def tenant_for_key(self, key: str | None, client: str = "") -> str:
        """The tenant of an API key; Unauthenticated when auth is on and it is not valid.
        `client` (its address) pays for the store reads of key ids nobody here knows:
        past `unknown_key_lookups_per_second` it gets TooManyRequests, before any read."""
        if not self.enabled:
            return DEFAULT_TENANT
        if not key:
            raise Unauthenticated(
                "an API key is required: send 'Authorization: Bearer <key>' (keys are made "
                "with `tuneforge keys create --tenant T`)"
            )
        if self.keys.is_unknown(key) and not self.keys.knows_now(key):
            self.check_unknown_key_lookup(client)
        tenant = self.keys.tenant_of(key)
        if tenant is None:
            raise Unauthenticated("the API key is not valid (unknown, malformed or revoked)")
        return tenant

    def admit(self, tenant: str) -> TenantPolicy:
        """The tenant's policy, after counting this request against its rate limit."""
        policy = self.policy(tenant)
        self.rate.take(policy)
        return policy

    def authenticates_without_io(self, authorization: str | None) -> bool:
        """Whether `authenticate(authorization)` would not touch the store (auth off, no
        key, or the key's record cached): an async caller may then run it inline."""
        if not self.enabled:
            return True
        key = bearer_token(authorization)
        return not key or self.keys.knows_now(key)

    def check_unknown_key_lookup(self, client: str) -> None:
        """Count a lookup of an unknown key id against `client`'s budget."""
        rate = self.settings.unknown_key_lookups_per_second
        wait = self.unknown_keys.take(client, rate, self.settings.unknown_key_lookup_burst)
        if wait > 0:
            raise TooManyRequests(
                "too many requests with API keys this server does not know from "
                f"{client or 'this client'}; retry in {math.ceil(wait)} s",
                retry_after_seconds=wait,
            )

    def authenticate(self, authorization: str | None, client: str = "") -> TenantPolicy:
        """From an `Authorization` header (or gRPC metadata) to an admitted policy;
        `client` is the caller's address."""
        return self.admit(self.tenant_for_key(bearer_token(authorization), client))

    def check_admin(self, authorization: str | None) -> None:
        admin = self.settings.admin_key
        if admin is None:
            raise Unauthenticated(
                "key administration is disabled: the server has no TUNEFORGE_ADMIN_KEY"
            )
        given = bearer_token(authorization) or ""
        if not hmac.compare_digest(given.encode(), admin.get_secret_value().encode()):
            raise Unauthenticated("the admin key is not valid")
