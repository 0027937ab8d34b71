"""The handlers of the three vecserve.v1 services over one core, as every transport serves them."""

from __future__ import annotations

from dataclasses import dataclass

from service.api.analogy import AnalogyCalls
from service.api.embedding import EmbeddingCalls
from service.api.index import IndexCalls
from service.core import Core


@dataclass(frozen=True)
class ServiceCalls:
    embedding: EmbeddingCalls
    index: IndexCalls
    analogy: AnalogyCalls


def calls_over(core: Core) -> ServiceCalls:
    return ServiceCalls(
        embedding=EmbeddingCalls(core.encoder, core.settings),
        index=IndexCalls(core.store),
        analogy=AnalogyCalls(core.analogies),
    )
