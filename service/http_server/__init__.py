"""The HTTP/JSON transport: the vecserve.v1 services over the Connect protocol (connectrpc) on uvicorn,
a thin door over the same core and service/api handlers as gRPC. No grpc here."""
