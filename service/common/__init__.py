"""Small pieces the core's packages share: input checks, caches, thread shares, durable files."""
