"""Per-tenant store credentials for trainers (TUNEFORGE_TRAINER_CREDENTIALS_FILE).

A trainer runs the tenant's data and model through transformers and torch; if anything
in it is subverted, its store credentials are what it can reach. With a pair per
tenant, scoped by the store's own policy (buckets of that tenant's data and outputs,
the state bucket's `jobs/` and `cache/`), one tenant's trainer cannot read another
tenant's data. A tenant without a pair falls back to the store's credentials, the
service's own, which reach everything; that is logged at start.

The file maps a tenant to its pair:

    {"acme": {"access_key_id": "AKIA...", "secret_access_key": "..."}}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from service.errors import InvalidArgument

log = logging.getLogger(__name__)


class StoreCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_key_id: str = Field(min_length=1)
    secret_access_key: SecretStr = Field(min_length=1)


_FILE = TypeAdapter(dict[str, StoreCredentials])


class TrainerCredentials:
    """Which store credentials a tenant's trainers get (None: the store's own)."""

    def __init__(self, by_tenant: dict[str, StoreCredentials]) -> None:
        self.by_tenant = by_tenant

    @classmethod
    def load(cls, path: Path | None) -> TrainerCredentials:
        """From the operator's file; refuses to start on a missing or malformed one
        rather than silently handing out the store's credentials."""
        if path is None:
            log.warning(
                "no TUNEFORGE_TRAINER_CREDENTIALS_FILE: every tenant's trainers get the "
                "store's own credentials (they can read and write every bucket the service can)"
            )
            return cls({})
        try:
            by_tenant = _FILE.validate_python(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as error:
            raise InvalidArgument(
                f"TUNEFORGE_TRAINER_CREDENTIALS_FILE {path}: {error}",
                field="trainer_credentials_file",
            ) from None
        log.warning(
            "trainer credentials for tenants %s; any other tenant's trainers get the store's "
            "own credentials (they can read and write every bucket the service can)",
            sorted(by_tenant),
        )
        return cls(by_tenant)

    def environment_for(self, tenant: str) -> dict[str, str]:
        """The AWS_* variables that replace the store's in this tenant's trainers' environment
        (empty: the tenant has no pair of its own)."""
        found = self.by_tenant.get(tenant)
        if found is None:
            return {}
        return {
            "AWS_ACCESS_KEY_ID": found.access_key_id,
            "AWS_SECRET_ACCESS_KEY": found.secret_access_key.get_secret_value(),
        }
