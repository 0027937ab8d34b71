"""`vecserve cluster serve`: the vecserve.v1 API as a Ray Serve application over sharded indexes.

    client ──gRPC (TLS, tokens)──> ingress replica: the project's gRPC server (interceptors, health,
                                   reflection, streaming) over a core whose store is a ShardedStore
                                   and whose encoder is a RemoteEncoder
                                        │ Serve handles
                      ┌─────────────────┼──────────────────┐
              encoder (R replicas,   shard-0 ... shard-<N-1> (one replica each, owning the
              dynamic batching in    IndexStore of DIR/shard-<k>, durable as on one server)
              each: the Encoder)

Ray Serve's own gRPC proxy runs no server interceptors and serves unary calls only, so the ingress
runs the same grpcio server as `vecserve serve` instead: bearer-token roles, request ids, health,
reflection, client streaming and TLS behave exactly as on one server. The ingress is pinned to the
node the command runs on, so --listen binds there.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from service.cluster.manifest import ClusterManifest, open_manifest
from service.cluster.remote import Outcome, RemoteEncoder, ServeShard, outcome_of
from service.cluster.routing import shard_name
from service.cluster.sharded_store import ShardedStore
from service.common.threads import run_in_own_thread
from service.config import Settings
from service.core import build_core
from service.embedding.encoder import Encoder
from service.errors import FailedPrecondition, InvalidSettings, Unavailable
from service.grpc_server.server import RunningServer, serve_core, stop_signal
from service.index.store import IndexStore
from service.observability.logs import configure_logging

log = logging.getLogger(__name__)

APP_NAME = "vecserve"
ENCODER_DEPLOYMENT = "encoder"
INGRESS_DEPLOYMENT = "ingress"
# IndexStore's methods a shard replica answers (its own shutdown is the replica's).
SHARD_METHODS = frozenset(
    {
        "create_index",
        "get_index",
        "list_indexes",
        "delete_index",
        "upsert",
        "get_document",
        "delete_documents",
        "search",
        "generation",
        "texts_and_vectors",
    }
)
# Concurrent calls per replica: the encoder's batcher gathers them, a shard's searches are merged.
MAX_ONGOING_REQUESTS = 64
# How often Serve checks its replicas: a replica whose process died is replaced within about this.
HEALTH_CHECK_PERIOD_SECONDS = 2.0
# A restarted shard replica waits this long for the replica it replaces to let go of the directory.
SHARD_LOCK_WAIT_SECONDS = 60.0
# Longest wait for the application to stop (the ingress drains, the shards snapshot).
STOP_SECONDS = 60.0
# The ingress waits this long at start-up for the encoder replicas to load the model.
ENCODER_START_SECONDS = 600.0
_QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


@dataclass(frozen=True)
class ClusterSettings:
    """How the application is laid out on the cluster (the server settings are Settings')."""

    encoder_replicas: int = 1
    # More than encoder_replicas: Serve scales the encoders between the two with the load.
    max_encoder_replicas: int = 0
    cpus_per_encoder: float = 1.0
    gpus_per_encoder: float = 0.0
    cpus_per_shard: float = 1.0
    # Custom resources each shard replica needs (nodes started with them hold the shards).
    shard_resources: dict[str, float] = field(default_factory=dict)
    # A shard call not answered within this fails with UNAVAILABLE naming the shard.
    shard_timeout_seconds: float = 30.0
    # An encoder call not answered within this fails with UNAVAILABLE.
    encoder_timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.encoder_replicas < 1:
            raise InvalidSettings(f"encoder replicas must be at least 1, got {self.encoder_replicas}")
        if self.max_encoder_replicas and self.max_encoder_replicas < self.encoder_replicas:
            raise InvalidSettings("the most encoder replicas cannot be fewer than the encoder replicas")
        if min(self.shard_timeout_seconds, self.encoder_timeout_seconds) <= 0:
            raise InvalidSettings("timeouts must be positive")

    @property
    def cpus_needed(self) -> float:
        return max(self.encoder_replicas, self.max_encoder_replicas) * self.cpus_per_encoder


class EncoderReplica:
    """One encoder replica: the project's Encoder with its dynamic batcher (Serve runs each call in a
    thread of its own, so concurrent calls meet in the batcher)."""

    def __init__(self, settings: Settings) -> None:
        self._encoder = Encoder(
            settings.model_name_or_path,
            settings.device,
            batching=settings.batching,
            max_texts_per_request=settings.max_texts_per_request,
            backend=settings.backend,
            cache_dir=settings.model_cache_dir,
        )

    def info(self) -> Outcome:
        return Outcome(value=self._encoder.info)

    def embed(self, texts: list[str], normalize: bool, truncate: bool) -> Outcome:
        return outcome_of(lambda: self._encoder.embed(texts, normalize=normalize, truncate=truncate))

    def encode(self, texts: list[str], normalize: bool, background: bool = False) -> Outcome:
        return outcome_of(lambda: self._encoder.encode(texts, normalize=normalize, background=background))

    def tokenize(self, texts: list[str], add_special_tokens: bool) -> Outcome:
        return outcome_of(lambda: self._encoder.tokenize(texts, add_special_tokens=add_special_tokens))

    def similarity_matrix(self, left: list[str], right: list[str]) -> Outcome:
        return outcome_of(lambda: self._encoder.similarity_matrix(left, right))

    def __del__(self) -> None:
        self._encoder.close()


def open_shard_store(directory: Path, settings: Settings, wait_seconds: float) -> IndexStore:
    """The shard's IndexStore, waiting while the replica it replaces still holds the directory."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return IndexStore(
                directory,
                None,  # the ingress embeds; shards get vectors
                max_documents_per_request=settings.max_documents_per_request,
                max_queries_per_request=settings.max_texts_per_request,
                max_text_characters=settings.max_text_characters,
                snapshot_every=settings.index_snapshot_every,
                search_batching=settings.search_batching,
                max_response_bytes=settings.max_message_bytes,
            )
        except FailedPrecondition:  # the directory's lock is held
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


class ShardReplica:
    """The one replica of a shard deployment: owns the IndexStore of its directory."""

    def __init__(self, directory: str, settings: Settings) -> None:
        self._store = open_shard_store(Path(directory), settings, SHARD_LOCK_WAIT_SECONDS)

    def call(self, method: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Outcome:
        if method not in SHARD_METHODS:
            raise ValueError(f"a shard does not answer {method!r}")
        return outcome_of(lambda: getattr(self._store, method)(*args, **kwargs))

    def __del__(self) -> None:
        self._store.close()  # writes the snapshots, releases the directory


class Ingress:
    """The front door: the project's gRPC server over a ShardedStore and a RemoteEncoder."""

    def __init__(
        self,
        settings: Settings,
        cluster: ClusterSettings,
        manifest: ClusterManifest,
        encoder: DeploymentHandle,
        shards: list[DeploymentHandle],
    ) -> None:
        def start() -> RunningServer:
            remote_encoder = _waiting_for_replicas(
                lambda: RemoteEncoder(encoder, cluster.encoder_timeout_seconds), ENCODER_START_SECONDS
            )
            info = remote_encoder.info
            recorded = manifest.with_model(info.model_name, info.dimension)  # refuses another dimension
            if recorded != manifest:
                recorded.save(settings.data_dir)
            store = ShardedStore(
                [
                    ServeShard(handle, shard_name(number), cluster.shard_timeout_seconds)
                    for number, handle in enumerate(shards)
                ],
                remote_encoder,
                max_documents_per_request=settings.max_documents_per_request,
                max_queries_per_request=settings.max_texts_per_request,
                max_text_characters=settings.max_text_characters,
                max_texts_per_encode=settings.max_texts_per_request,
                search_batching=settings.search_batching,
            )
            running = serve_core(settings, build_core(settings, remote_encoder, store))  # type: ignore[arg-type]
            running.vocabulary.start()
            return running

        self._grace = settings.shutdown_grace_seconds
        # Serve refuses blocking handle calls on the event loop that runs a replica's constructor.
        self._running: RunningServer = run_in_own_thread(start, "start-up")

    def port(self) -> int:
        return self._running.port

    def __del__(self) -> None:
        self._running.stop(self._grace)


def _waiting_for_replicas(build: Callable[[], RemoteEncoder], seconds: float) -> RemoteEncoder:
    """The first call waits for the replicas to come up (loading a model takes a while)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return build()
        except Unavailable:
            if time.monotonic() >= deadline:
                raise


def build_application(
    settings: Settings, cluster: ClusterSettings, manifest: ClusterManifest, ingress_node_id: str
) -> serve.Application:
    """The application: the encoder deployment, one deployment per shard of the manifest, and the
    ingress, pinned to `ingress_node_id` (where settings.listen is meant). settings.data_dir is the
    sharded directory; every node must reach it at the same path (see docs/scale-out.md)."""
    settings = dataclasses.replace(settings, data_dir=Path(settings.data_dir).resolve())
    health = {"health_check_period_s": HEALTH_CHECK_PERIOD_SECONDS, "logging_config": _QUIET_LOGS}
    encoder_options: dict[str, Any] = {
        "name": ENCODER_DEPLOYMENT,
        "max_ongoing_requests": MAX_ONGOING_REQUESTS,
        "ray_actor_options": {"num_cpus": cluster.cpus_per_encoder, "num_gpus": cluster.gpus_per_encoder},
        **health,
    }
    if cluster.max_encoder_replicas > cluster.encoder_replicas:
        encoder_options["autoscaling_config"] = {
            "min_replicas": cluster.encoder_replicas,
            "max_replicas": cluster.max_encoder_replicas,
        }
    else:
        encoder_options["num_replicas"] = cluster.encoder_replicas
    encoder = serve.deployment(EncoderReplica).options(**encoder_options).bind(settings)
    shard_actor_options = {"num_cpus": cluster.cpus_per_shard, "resources": dict(cluster.shard_resources)}
    shards = [
        serve.deployment(ShardReplica)
        .options(
            name=shard_name(number),
            num_replicas=1,  # one writer per directory: the store's lock allows no other
            max_ongoing_requests=MAX_ONGOING_REQUESTS,
            ray_actor_options=shard_actor_options,
            **health,
        )
        .bind(str(manifest.shard_directory(settings.data_dir, number)), settings)
        for number in range(manifest.shard_count)
    ]
    return (
        serve.deployment(Ingress)
        .options(
            name=INGRESS_DEPLOYMENT,
            num_replicas=1,
            ray_actor_options={"num_cpus": 0, "label_selector": {"ray.io/node-id": ingress_node_id}},
            **health,
        )
        .bind(settings, cluster, manifest, encoder, shards)
    )


@dataclass(frozen=True)
class ClusterServer:
    """A running application: the port its ingress bound (on this node)."""

    port: int

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Deletes the application: the ingress drains its calls, the shards write their snapshots.

        Gives up after `timeout` seconds, as when the signal that stops this process stopped the local
        Ray's own processes too; the shards then catch up from their records on the next start.
        """
        deleting = threading.Thread(target=serve.delete, args=(APP_NAME,), daemon=True, name="delete-app")
        deleting.start()
        deleting.join(timeout)
        if deleting.is_alive():
            log.warning("the application did not stop within %g s; leaving it to Ray", timeout)


def start_cluster_server(
    settings: Settings, cluster: ClusterSettings, shard_count: int | None
) -> ClusterServer:
    """Deploys the application on the connected Ray cluster over the sharded directory
    settings.data_dir (created with `shard_count` shards if new) and waits until it serves."""
    import ray

    manifest = open_manifest(settings.data_dir, shard_count)
    # Serve's own HTTP and gRPC proxies are not used: the ingress serves the API itself.
    serve.start(proxy_location="Disabled")
    application = build_application(settings, cluster, manifest, ray.get_runtime_context().get_node_id())
    ingress = serve.run(application, name=APP_NAME, route_prefix=None)
    return ClusterServer(port=ingress.port.remote().result())


def serve_cluster(settings: Settings, cluster: ClusterSettings, shard_count: int | None) -> int:
    """Runs the application until SIGTERM or SIGINT, then deletes it; returns the exit code."""
    configure_logging(settings.log_format)
    stop_requested = stop_signal()
    server = start_cluster_server(settings, cluster, shard_count)
    log.info("vecserve cluster serving %s on port %d", settings.data_dir, server.port)
    stop_requested.wait()
    server.stop()
    log.info("stopped")
    return 0
