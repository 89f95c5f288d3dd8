"""Where the Qdrant server is and how to open gRPC channels to it.

`Endpoint` is a small picklable value: it crosses into Ray actors, which open their own channels (a gRPC channel
cannot be pickled, and one per process is what gRPC wants anyway). The API key is excluded from repr so it never
reaches a log line or an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from engine.errors import ConfigError

# 64 MiB both ways: replies to large scrolls can be bigger than gRPC's 4 MiB default, and Qdrant's gRPC service sets
# no decoding limit of its own (src/tonic/mod.rs in the qdrant repository; the 32 MiB cap is REST's).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keepalive so a long job notices a dead server/LB connection instead of hanging on a half-open socket.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a server restart: the default backoff can reach 120 s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = False
    api_key: str | None = field(default=None, repr=False)
    ca_cert: str | None = None  # PEM file for a private CA / self-signed server certificate
    timeout_s: float = 60.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("api-key", self.api_key),) if self.api_key else ()

    def _credentials(self) -> grpc.ChannelCredentials:
        root = None
        if self.ca_cert:
            try:
                root = Path(self.ca_cert).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"qdrant.tls_ca_cert={self.ca_cert!r} cannot be read ({exc.strerror}); point it at a PEM file"
                ) from None
        return grpc.ssl_channel_credentials(root_certificates=root)

    def channel(self) -> grpc.Channel:
        if self.tls:
            return grpc.secure_channel(self.address, self._credentials(), options=_CHANNEL_OPTIONS)
        return grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.tls:
            return grpc.aio.secure_channel(self.address, self._credentials(), options=_CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
