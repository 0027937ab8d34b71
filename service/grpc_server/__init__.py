"""The gRPC transport: server, servicers, interceptors, bearer-token auth and TLS over the core."""
