"""Authentication, tenancy and per-tenant limits, shared by the three faces.

keys.py: API keys in the state bucket (hash only); tenants.py: `Access`, from a
credential to a tenant and its `TenantPolicy`; limits.py: the policy and the
requests-per-second token bucket.
"""
