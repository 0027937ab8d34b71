"""One servicer per vecserve.v1 service: messages to core calls, domain errors to status codes."""
