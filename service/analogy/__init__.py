"""Meaning as geometry: analogies, relations and nearest words over a vocabulary, and their evaluation."""
