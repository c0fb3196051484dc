"""REST v1 key administration, for the operator (`tuneforge keys ...` calls these).

Every route needs `Authorization: Bearer <TUNEFORGE_ADMIN_KEY>`; a server without an
admin key refuses them all (401). A new key is in the create response and nowhere else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from service.auth.keys import TENANT_PATTERN, KeyRecord, KeyStore
from service.faces.rest.deps import AdminDep, ContextDep
from service.faces.rest.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], responses=ERROR_RESPONSES)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: Annotated[
        str,
        Field(
            pattern=TENANT_PATTERN, description="The tenant the key acts for.", examples=["acme"]
        ),
    ]


class KeyPublic(BaseModel):
    keyId: str
    tenant: str
    createdAt: str
    revoked: bool
    revokedAt: str | None = None

    @classmethod
    def of(cls, record: KeyRecord) -> KeyPublic:
        return cls.model_validate(record.model_dump(exclude={"sha256"}))


class KeyCreated(KeyPublic):
    key: str = Field(description="The API key. Shown once: the service keeps only its hash.")


class KeyList(BaseModel):
    keys: list[KeyPublic]


KeyId = Annotated[str, Path(description="The key's id (the part after 'tfk_').")]


def _keys(context: ContextDep) -> KeyStore:
    assert context.access is not None, "AdminDep refuses every call without it"
    return context.access.keys


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=KeyCreated, summary="Create an API key"
)
def create_key(body: KeyCreate, context: ContextDep, _admin: AdminDep) -> KeyCreated:
    made = _keys(context).create(body.tenant)
    return KeyCreated(**KeyPublic.of(made.record).model_dump(), key=made.key)


@router.get("", response_model=KeyList, summary="List API keys (never the keys themselves)")
def list_keys(context: ContextDep, _admin: AdminDep) -> KeyList:
    return KeyList(keys=[KeyPublic.of(record) for record in _keys(context).list()])


@router.post("/{key_id}/revoke", response_model=KeyPublic, summary="Revoke an API key")
def revoke_key(key_id: KeyId, context: ContextDep, _admin: AdminDep) -> KeyPublic:
    return KeyPublic.of(_keys(context).revoke(key_id))
