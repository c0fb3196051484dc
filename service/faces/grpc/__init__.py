"""The gRPC edge: FineTuningService (proto/tuneforge/v1/) over the same core as REST.

server.py starts it (with health checking and reflection), servicer.py holds the thin
handlers, mapping.py converts messages, errors.py maps errors to statuses, once.
"""
