"""The transport-neutral API: vecserve.v1 messages to core calls and back, error meanings and token roles.

Every transport (gRPC, HTTP/Connect) imports this package and only maps its results to its own
wire: status codes, headers, threads. Nothing here imports grpc.
"""
