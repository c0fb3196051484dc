"""Generated from proto/tuneforge/v1/ (`make proto`): do not edit the *_pb2* files."""
