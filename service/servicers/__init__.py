"""The gRPC transport: servicers translate messages to core calls and domain errors to status codes."""
