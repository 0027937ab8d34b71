"""What operators see: Prometheus metrics and request-id logs."""
