"""Small pieces the packages share: input checks, caches, thread shares, durable files, the shutdown drain."""
