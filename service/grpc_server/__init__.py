"""The gRPC transport: server, servicers, the front door (request ids, access log, metrics, bearer
tokens) and TLS over the core."""
