"""Start-up: the embedded store, the demo assets, one replica or several workers, and the
HTTP app that puts the REST and Bedrock faces on one port. Nothing imports this layer."""
