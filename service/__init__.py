"""vecserve: a core (embedding, index, analogy) with thin transports over it (grpc_server).

Importing the package applies the process-wide threading defaults (service.runtime) before any of
its modules loads torch, faiss or tokenizers, so every entry point gets them.
"""

from service.runtime import apply_threading_defaults

__version__ = "0.1.0"

apply_threading_defaults()
