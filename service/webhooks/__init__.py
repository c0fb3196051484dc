"""Job notifications: signed deliveries when a job ends (delivery.py) and each tenant's
signing secret (secrets.py)."""
