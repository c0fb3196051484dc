"""The faces: REST (rest/), gRPC (grpc/) and Bedrock (bedrock/), each parse -> core -> map.

A face parses its wire format, calls the core's `JobService` (through the
`ServiceContext` every face is given, context.py), and maps the answer and the errors
back. No face imports another (make lint).
"""
