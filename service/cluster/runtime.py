"""Connecting to Ray: an existing cluster at --ray-address, or a local one sized for the job."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator


@contextlib.contextmanager
def ray_session(address: str | None, local_cpus: float) -> Iterator[None]:
    """Ray for the block: the cluster at `address` (host:port of a head, or "auto"), else a local Ray
    started here and stopped after, with at least `local_cpus` logical CPUs so that the actors and
    replicas asked for all fit on this machine (as `vecserve serve` does on one machine, without
    Ray). A Ray this process is already connected to (a test's, say) is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(local_cpus))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
