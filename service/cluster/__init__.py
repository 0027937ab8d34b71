"""Scale-out on Ray: batch indexing with Ray Data; sharded indexes and replicated encoders on Ray Serve."""
