"""The embedded Qdrant-compatible gRPC endpoint, in-process: `EmbeddedServer(data_dir).start()`.

It serves Qdrant's own gRPC services (the servicer base classes shipped in qdrant-client) from qdrant-edge shards,
so the engine, the demo and the tests talk to it exactly as to a Qdrant server. The gRPC server is `grpc.aio`,
run by an event loop on a thread of its own, so `start()` and `stop()` are plain calls for any caller.

Hooks for tests and benchmarks (in-process):
    storage_reads() -> {collection: StorageReads(with_payload, without_payload)}   points read from shards
    reset_storage_reads()
    finish_index_builds()           every collection that is Yellow while its index "builds" turns Green now
    apply_deferred_writes() -> int  writes held back by the `ack_before_apply` fault are applied now
A child process (`serve-embedded --stats-file PATH`) writes the storage reads to PATH as JSON every few seconds
and on stop (storage_reads.read_stats_file reads it back).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Optional

import grpc
from qdrant_client import grpc as pb

from engine.embedded.aio import async_servicer
from engine.embedded.auth import ApiKeyInterceptor
from engine.embedded.catalog import Catalog
from engine.embedded.collections_service import EDGE_VERSION, CollectionsService, QdrantService
from engine.embedded.compat import DEFAULT_VERSION, Compat
from engine.embedded.faults import FaultInjector, FaultInterceptor, FaultSpec
from engine.embedded.indexing import DEFAULT_SECONDS_PER_POINT
from engine.embedded.points_service import PointsService
from engine.embedded.storage_reads import StorageReadCounter, StorageReads, write_stats_file
from engine.errors import ConfigError, PreconditionError

log = logging.getLogger(__name__)

# Qdrant's gRPC server sets no size limit on what it receives or sends (src/tonic/mod.rs:
# max_decoding_message_size(usize::MAX), tonic's encoding default is unlimited): -1 is gRPC's "unlimited", so the
# client's own limits decide, as against a real server. (The 32 MiB cap is REST's, actix only.)
MAX_MESSAGE_BYTES = -1
# How often shards written since the last flush are flushed (Qdrant's default flush_interval_sec).
FLUSH_INTERVAL_S = 5.0
# How often the operator log line with write/read rates appears (only when there was traffic).
STATS_INTERVAL_S = 60.0
# How long stop() lets in-flight calls finish before cancelling them.
STOP_GRACE_S = 5.0
# Bound on binding and starting the gRPC server inside start().
START_TIMEOUT_S = 30.0


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _read_tls(cert: Optional[str], key: Optional[str]) -> Optional[tuple[bytes, bytes]]:
    """(private key PEM, certificate chain PEM) for grpc.ssl_server_credentials, or None for plaintext."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key (PEM files); give both or neither")
    try:
        return Path(key).read_bytes(), Path(cert).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename!r} ({exc.strerror}); pass readable PEM files") from None


class EmbeddedServer:
    """A Qdrant-compatible gRPC server on qdrant-edge shards under `data_dir`. Use as a context manager."""

    def __init__(
        self,
        data_dir: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: Optional[str] = None,
        emulate_version: str = DEFAULT_VERSION,
        faults: Optional[str] = None,
        seed: int = 0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        index_seconds_per_point: float = DEFAULT_SECONDS_PER_POINT,
        stats_file: Optional[str] = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port} is out of range; use 1-65535, or 0 for a free port")
        self.data_dir = Path(data_dir)
        self.host = host
        self.requested_port = port
        self.compat = Compat.from_text(emulate_version)
        self.fault_spec = FaultSpec.parse(faults)
        self.injector = FaultInjector(self.fault_spec, seed) if self.fault_spec.active else None
        self._api_key = api_key or None
        self._tls = _read_tls(tls_cert, tls_key)
        if index_seconds_per_point < 0:
            raise ConfigError(f"index build time per point must be 0 or more seconds, got {index_seconds_per_point}")
        self.index_seconds_per_point = index_seconds_per_point
        self.stats_file = Path(stats_file) if stats_file else None
        self.reads = StorageReadCounter()
        self._stats_written = -1
        self.catalog: Optional[Catalog] = None
        self._points: Optional[PointsService] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[threading.Thread] = None
        self._server: Optional[grpc.aio.Server] = None
        self._port: Optional[int] = None
        self._stop_flusher = threading.Event()
        self._flusher: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedServer is not started")
        return self._port

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Open the data dir, bind, serve. Returns the bound port (a free one if port=0)."""
        if self._loop is not None:
            raise RuntimeError("EmbeddedServer already started")
        catalog = Catalog(self.data_dir)
        catalog.open()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="embedded-grpc", daemon=True)
        thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._start_server(catalog), loop).result(START_TIMEOUT_S)
        except BaseException:
            self._halt_loop(loop, thread)
            catalog.close()
            raise
        self.catalog = catalog
        self._loop, self._loop_thread, self._port = loop, thread, port
        self._stop_flusher.clear()
        self._flusher = threading.Thread(target=self._flush_loop, name="embedded-flush", daemon=True)
        self._flusher.start()
        log.info(
            "qdrant-edge %s endpoint on %s (%s): data %s, emulating Qdrant %s, api key %s, faults %s",
            EDGE_VERSION,
            self.address,
            "TLS" if self._tls else "plaintext",
            self.data_dir,
            self.compat.version_text,
            "required" if self._api_key else "off",
            self.fault_spec.describe(),
        )
        return port

    async def _start_server(self, catalog: Catalog) -> int:
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self._api_key:
            interceptors.append(ApiKeyInterceptor(self._api_key))
        if self.injector is not None:
            interceptors.append(FaultInterceptor(self.injector))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
                # Qdrant's tonic server (src/tonic/mod.rs: Server::builder() with no ping policy) answers every
                # keepalive ping; gRPC core's default would GOAWAY our clients' 30 s pings as "too_many_pings".
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        points = PointsService(catalog, self.compat, self.reads)
        collections = CollectionsService(catalog, self.compat, self.index_seconds_per_point)
        pb.add_QdrantServicer_to_server(async_servicer(QdrantService(self.compat), pb.QdrantServicer), server)
        pb.add_CollectionsServicer_to_server(async_servicer(collections, pb.CollectionsServicer), server)
        pb.add_PointsServicer_to_server(async_servicer(points, pb.PointsServicer), server)
        target = format_address(self.host, self.requested_port)
        try:
            if self._tls is not None:
                port = server.add_secure_port(target, grpc.ssl_server_credentials([self._tls]))
            else:
                port = server.add_insecure_port(target)
        except RuntimeError:  # grpc's own text only points at GRPC_VERBOSITY; say what usually happened
            port = 0
        if port == 0:
            raise PreconditionError(f"cannot listen on {target}: address in use or not available; pick another --port")
        await server.start()
        self._server = server
        self._points = points
        return port

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop serving (in-flight calls get `grace` seconds), flush and close every shard, release the dir."""
        loop, thread = self._loop, self._loop_thread
        server, self._server = self._server, None
        if loop is not None and server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(grace), loop).result()
            if self.injector is not None:  # writes already acknowledged are in the "WAL": they are applied
                asyncio.run_coroutine_threadsafe(self.injector.deferred.drain(), loop).result()
        if loop is not None and thread is not None:
            self._halt_loop(loop, thread)
        self._loop = self._loop_thread = None
        self._stop_flusher.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self._log_stats()
        self._write_stats_file(force=True)
        catalog, self.catalog = self.catalog, None
        if catalog is not None:
            catalog.close()
        if self.injector is not None and self.injector.counts:
            log.info("injected faults: %s", dict(self.injector.counts))
        if server is not None:
            log.info("endpoint on %s stopped", format_address(self.host, self._port or 0))

    @staticmethod
    def _halt_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> "EmbeddedServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- housekeeping ---------------------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self._stop_flusher.wait(FLUSH_INTERVAL_S):
            catalog = self.catalog
            if catalog is None:
                return
            try:
                catalog.flush_dirty()
            except Exception:  # noqa: BLE001 - keep flushing the others; the WAL still has every write
                log.exception("periodic flush failed")
            self._write_stats_file()
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_INTERVAL_S
                self._log_stats()

    def _write_stats_file(self, force: bool = False) -> None:
        if self.stats_file is None or (not force and self.reads.version == self._stats_written):
            return
        self._stats_written = self.reads.version
        try:
            write_stats_file(self.stats_file, self.reads.snapshot())
        except OSError:
            log.exception("cannot write the stats file %s", self.stats_file)

    # -- hooks for tests and benchmarks -----------------------------------------------------------------------------

    def storage_reads(self) -> dict[str, StorageReads]:
        """Points materialised from each collection's shards since start (or the last reset)."""
        return self.reads.snapshot()

    def reset_storage_reads(self) -> None:
        self.reads.reset()

    def finish_index_builds(self) -> None:
        """End every emulated index build now: collections report Green (no waiting in tests)."""
        if self.catalog is not None:
            for coll in self.catalog.collections():
                coll.index_build.finish()

    def apply_deferred_writes(self) -> int:
        """Apply now the writes the `ack_before_apply` fault acknowledged but held back; returns how many."""
        if self.injector is None or self._loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self.injector.deferred.drain(), self._loop).result()

    def _log_stats(self) -> None:
        if self._points is None:
            return
        counts, elapsed = self._points.stats.take()
        if counts:
            rates = ", ".join(f"{what} {n:,} ({n / max(elapsed, 1e-9):,.0f}/s)" for what, n in sorted(counts.items()))
            log.info("last %.0fs: %s", elapsed, rates)
