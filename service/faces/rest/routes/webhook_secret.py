"""REST v1: the caller's own webhook signing secret (service/webhooks/secrets.py).

Each tenant reads and rotates only its own: the tenant is the caller's, never a
parameter. `tuneforge webhooks secret` / `tuneforge webhooks rotate-secret` call these.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.errors import FailedPrecondition
from service.faces.http_auth import CurrentTenant
from service.faces.rest.deps import ContextDep
from service.faces.rest.errors import ERROR_RESPONSES
from service.webhooks.secrets import TenantWebhookSecret, WebhookSecrets

router = APIRouter(prefix="/v1/webhook-secret", tags=["webhooks"], responses=ERROR_RESPONSES)


class WebhookSecretPublic(BaseModel):
    tenant: str
    secret: str = Field(
        description="Verifies X-Tuneforge-Signature on this tenant's job notifications."
    )
    generation: int = Field(description="1, then one more at each rotation.")
    rotatedAt: str | None = Field(description="When it was last rotated; null: never.")

    @classmethod
    def of(cls, secret: TenantWebhookSecret) -> WebhookSecretPublic:
        return cls(
            tenant=secret.tenant,
            secret=secret.secret,
            generation=secret.generation,
            rotatedAt=secret.rotatedAt,
        )


def _secrets(context: ContextDep) -> WebhookSecrets:
    if context.webhook_secrets is None:
        raise FailedPrecondition(
            "this server sends no webhooks (the operator set no TUNEFORGE_WEBHOOK_SECRET)"
        )
    return context.webhook_secrets


@router.get("", response_model=WebhookSecretPublic, summary="Your webhook signing secret")
def get_webhook_secret(context: ContextDep, caller: CurrentTenant) -> WebhookSecretPublic:
    return WebhookSecretPublic.of(_secrets(context).current(caller.tenant))


@router.post(
    "/rotate", response_model=WebhookSecretPublic, summary="Rotate your webhook signing secret"
)
def rotate_webhook_secret(context: ContextDep, caller: CurrentTenant) -> WebhookSecretPublic:
    return WebhookSecretPublic.of(_secrets(context).rotate(caller.tenant))
