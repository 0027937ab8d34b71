"""Subcommands of the `vecserve` command line, one module per service."""
