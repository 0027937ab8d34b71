"""Named, durable vector indexes: the SQLite record, FAISS structures per kind, snapshots, filters, search."""
