"""`reembed serve-embedded`: run the embedded Qdrant-compatible gRPC endpoint until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from typing import Any

from engine.embedded.compat import DEFAULT_VERSION
from engine.embedded.indexing import DEFAULT_SECONDS_PER_POINT

log = logging.getLogger(__name__)

API_KEY_ENV = "REEMBED_EMBEDDED_API_KEY"  # lets callers keep the key off the command line (and out of `ps`)
READY_PREFIX = "listening on "  # the one stdout line EmbeddedProcess and scripts wait for


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve-embedded",
        help="serve a Qdrant-compatible gRPC endpoint on qdrant-edge (demo, tests, benchmarks)",
        description=(
            "Serve Qdrant's gRPC API from qdrant-edge shards under --data. Prints 'listening on HOST:PORT' once "
            "ready; stops cleanly (shards flushed) on SIGINT or SIGTERM."
        ),
    )
    parser.add_argument("--data", required=True, help="data directory (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=6334, help="gRPC port (default 6334; 0 picks a free port)")
    parser.add_argument(
        "--api-key", default=None, help=f"require this api-key on every call (or set {API_KEY_ENV})"
    )
    parser.add_argument(
        "--emulate-version",
        default=DEFAULT_VERSION,
        help=f"Qdrant version to report and behave as (default {DEFAULT_VERSION}; <1.18 lacks vector-name RPCs)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help="inject faults, e.g. 'unavailable=0.05,exhausted=0.02,latency_ms=0-30,apply_then_fail=0.02,"
        "ack_before_apply=0.05,rate_limit=20000' (grammar: engine/embedded/faults.py)",
    )
    parser.add_argument(
        "--index-us-per-point",
        type=float,
        default=DEFAULT_SECONDS_PER_POINT * 1e6,
        help="emulated index build time: a collection whose indexing is switched back on stays Yellow for "
        f"points x this many microseconds (default {DEFAULT_SECONDS_PER_POINT * 1e6:g})",
    )
    parser.add_argument(
        "--stats-file",
        default=None,
        help="write points read from storage per collection to this JSON file (every few seconds and on stop)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for fault injection (default 0)")
    parser.add_argument("--tls-cert", default=None, help="serve TLS with this PEM certificate (chain)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.set_defaults(func=run)


def _tune_gc() -> None:
    # Each request allocates thousands of short-lived, acyclic objects (payload dicts, floats, messages) that
    # reference counting frees; default GC thresholds still rescan them every 700 allocations. Measured here:
    # upsert +20-50 %, scroll with vectors +40 %. Startup objects are frozen out of every future collection.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run(args: argparse.Namespace) -> int:
    # Imported here: grpc and qdrant-client take ~1 s to import, which every other `reembed` command would pay.
    from engine.embedded.server import EmbeddedServer

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    server = EmbeddedServer(
        args.data,
        host=args.host,
        port=args.port,
        api_key=api_key,
        emulate_version=args.emulate_version,
        faults=args.faults,
        seed=args.seed,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        index_seconds_per_point=args.index_us_per_point / 1e6,
        stats_file=args.stats_file,
    )
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        _tune_gc()
        print(f"{READY_PREFIX}{server.address}", flush=True)
        while not stop.wait(1.0):
            pass
        log.info("received %s; stopping", signal.Signals(received[0]).name if received else "stop")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stdout.flush()
    return 0
