"""Which Qdrant version the endpoint pretends to be, and what that version understands.

Older servers do not know newer request fields: protobuf drops unknown fields, so an old server silently ignores
`update_mode` (a plain upsert!) or collection `metadata`, and answers UNIMPLEMENTED for RPCs it lacks. The endpoint
reproduces that, so the planner's version checks can be tested against the real consequences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import ConfigError

DEFAULT_VERSION = "1.18.0"

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def parse_version(text: str) -> tuple[int, int, int]:
    match = _VERSION.match(text.strip())
    if not match:
        raise ConfigError(f"emulated Qdrant version {text!r} is not MAJOR.MINOR[.PATCH]; e.g. --emulate-version 1.18.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class Compat:
    version: tuple[int, int, int]

    @classmethod
    def from_text(cls, text: str) -> "Compat":
        return cls(parse_version(text))

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def metadata(self) -> bool:
        """Collection `metadata` (CreateCollection field 18) exists since 1.16."""
        return self.version >= (1, 16, 0)

    @property
    def update_filter(self) -> bool:
        """Conditional writes (`update_filter` on upsert and update-vectors) exist since 1.16."""
        return self.version >= (1, 16, 0)

    @property
    def update_mode(self) -> bool:
        """Upsert `update_mode` (insert_only / update_only) exists since 1.17."""
        return self.version >= (1, 17, 0)

    @property
    def list_shard_keys(self) -> bool:
        """Collections.ListShardKeys exists since 1.17 (lib/api/src/grpc/proto/collections_service.proto)."""
        return self.version >= (1, 17, 0)

    @property
    def vector_names(self) -> bool:
        """Points.CreateVectorName / DeleteVectorName exist since 1.18."""
        return self.version >= (1, 18, 0)
