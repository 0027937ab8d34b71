"""The core without any transport: encoder, index store, analogy engine and vocabulary, built from Settings.

Every door into vecserve (the gRPC server, the HTTP server, batch jobs, benchmarks, cluster
workers) builds its core here, so they all apply the same limits to the same parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from service.analogy.engine import AnalogyEngine
from service.analogy.vocabulary import DefaultVocabulary, model_key
from service.config import Settings
from service.embedding.encoder import Encoder
from service.index.store import IndexStore

log = logging.getLogger(__name__)


@dataclass
class Core:
    """The parts one vecserve process serves from; close() releases them (the data directory's lock,
    the batching workers), last built first."""

    settings: Settings
    encoder: Encoder
    store: IndexStore
    vocabulary: DefaultVocabulary
    analogies: AnalogyEngine
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


def build_core(settings: Settings, encoder: Encoder | None = None, store: IndexStore | None = None) -> Core:
    """Loads the model (unless an encoder is given, which the caller then owns and closes), opens the
    data directory (unless a store is given, owned by the caller too) and prepares the vocabulary
    (built on first use, or by vocabulary.start()).

    The cluster's ingress gives a RemoteEncoder and a ShardedStore (service/cluster), which have the
    methods of Encoder and IndexStore that the core and the transports call.

    When a later part fails (the data directory is locked by another server, say), the parts already
    built are closed before the error is raised.
    """
    closers: list[Callable[[], None]] = []
    try:
        if encoder is None:
            encoder = Encoder(
                settings.model_name_or_path,
                settings.device,
                batching=settings.batching,
                max_texts_per_request=settings.max_texts_per_request,
                backend=settings.backend,
                cache_dir=settings.model_cache_dir,
            )
            closers.append(encoder.close)
        if store is None:
            store = IndexStore(
                settings.data_dir,
                encoder,
                max_documents_per_request=settings.max_documents_per_request,
                max_queries_per_request=settings.max_texts_per_request,
                max_text_characters=settings.max_text_characters,
                max_texts_per_encode=settings.max_texts_per_request,
                snapshot_every=settings.index_snapshot_every,
                search_batching=settings.search_batching,
                max_response_bytes=settings.max_message_bytes,
            )
            closers.append(store.close)
        info = encoder.info
        vocabulary = DefaultVocabulary(
            encoder,
            settings.data_dir,
            model_key(info.model_name, info.dimension, info.dtype, info.backend),
            settings.vocabulary_size,
            info.dimension,
        )
        analogies = AnalogyEngine(
            encoder, vocabulary, index_vocabulary=store.texts_and_vectors, index_generation=store.generation
        )
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return Core(settings, encoder, store, vocabulary, analogies, closers)
