"""Text to vectors: the encoder, its model inputs, dynamic batching and the CPU/GPU backends."""
