"""Each tenant's own store identity on the embedded SeaweedFS: its trainers get a key pair
that the store itself limits to what the tenant is granted.

Invariants:
- One store user per tenant, `tuneforge-<tenant>`, made through the store's IAM API
  (SeaweedFS serves it on its S3 port; `EmbeddedS3(iam_writable=True)`), with one inline
  policy: get, put and delete objects, and list, in each of the tenant's grants (a folder
  grant: under its prefix only), and in the state bucket under `jobs/` and `cache/` (the
  trainer's job documents and the tokenized-data cache). Nothing else: not `keys/`,
  not another tenant's folder or bucket.
- Its key pair is kept in the state bucket, `identities/<tenant>.json`, written once with
  If-None-Match: of replicas making it at once, one wins and the others delete theirs.
  The policy is rewritten when the tenant's grants change (its digest is kept beside the
  key), before a trainer gets the key.
- A tenant granted "*" (any bucket) cannot be limited to less: its trainers keep the
  service's own pair (logged).
Secrets are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from jobstore.storage import ObjectStore, PreconditionFailed, S3Location
from service.auth.limits import ANY_BUCKET, Grant

log = logging.getLogger(__name__)

_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
_POLICY_NAME = "tuneforge-trainer"


def trainer_policy(grants: Sequence[str], state_bucket: str) -> dict[str, Any]:
    """The IAM policy of a tenant's trainers: its grants, and its jobs' documents."""
    places = [Grant.parse(grant) for grant in grants]
    places += [Grant(state_bucket, "jobs/"), Grant(state_bucket, "cache/")]
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Action": _OBJECT_ACTIONS,
            "Resource": sorted({f"arn:aws:s3:::{g.bucket}/{g.prefix}*" for g in places}),
        }
    ]
    whole = sorted({g.bucket for g in places if not g.prefix})
    if whole:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}" for bucket in whole],
            }
        )
    for bucket in sorted({g.bucket for g in places if g.prefix and g.bucket not in whole}):
        prefixes = sorted(f"{g.prefix}*" for g in places if g.bucket == bucket)
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": prefixes}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


class TenantStoreIdentities:
    def __init__(
        self,
        storage: ObjectStore,
        state_bucket: str,
        iam_client: Any,
        grants_of: Callable[[str], Sequence[str]],
    ) -> None:
        self.storage = storage
        self.state_bucket = state_bucket
        self.iam = iam_client
        self.grants_of = grants_of
        self._known: dict[str, tuple[str, dict[str, str]]] = {}  # tenant -> (digest, env)
        self._lock = threading.Lock()

    def environment_for(self, tenant: str) -> dict[str, str]:
        """The AWS_* variables of this tenant's trainers: its own key pair (made on first
        use), or nothing (the service's pair) for a tenant granted any bucket."""
        grants = tuple(self.grants_of(tenant))
        if ANY_BUCKET in grants:
            log.warning(
                "tenant %s is granted any bucket: its trainers get the service's store pair",
                tenant,
            )
            return {}
        policy = json.dumps(trainer_policy(grants, self.state_bucket), sort_keys=True)
        digest = hashlib.sha256(policy.encode()).hexdigest()
        with self._lock:
            known = self._known.get(tenant)
        if known is not None and known[0] == digest:
            return known[1]
        record = self._identity(tenant, policy, digest)
        environment = {
            "AWS_ACCESS_KEY_ID": record["accessKeyId"],
            "AWS_SECRET_ACCESS_KEY": record["secretAccessKey"],
        }
        with self._lock:
            self._known[tenant] = (digest, environment)
        return environment

    def _identity(self, tenant: str, policy: str, digest: str) -> dict[str, str]:
        location = S3Location(self.state_bucket, f"identities/{tenant}.json")
        user = f"tuneforge-{tenant}"
        found = self.storage.get_json(location)
        if found is not None:
            record, etag = found
            if record.get("policySha256") != digest:  # the grants changed
                self.iam.put_user_policy(
                    UserName=user, PolicyName=_POLICY_NAME, PolicyDocument=policy
                )
                record["policySha256"] = digest
                try:
                    self.storage.put_json(location, record, if_match=etag)
                except PreconditionFailed:
                    pass  # another replica wrote it: the policy is this one either way
                log.info("store identity %s: policy updated to the tenant's grants", user)
            return {key: str(value) for key, value in record.items()}
        try:
            self.iam.create_user(UserName=user)
        except self.iam.exceptions.EntityAlreadyExistsException:
            pass  # made by another replica, or before a restart
        self.iam.put_user_policy(UserName=user, PolicyName=_POLICY_NAME, PolicyDocument=policy)
        key = self.iam.create_access_key(UserName=user)["AccessKey"]
        record = {
            "user": user,
            "accessKeyId": key["AccessKeyId"],
            "secretAccessKey": key["SecretAccessKey"],
            "policySha256": digest,
        }
        try:
            self.storage.put_json(location, record, if_none_match=True)
        except PreconditionFailed:  # another replica's key won: ours is not kept
            self.iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            return self._identity(tenant, policy, digest)
        log.info("store identity %s made for tenant %s's trainers", user, tenant)
        return record
