"""Which shard owns a point id: Qdrant's consistent-hash ring, reproduced bit for bit.

Copied from Qdrant (lib/collection/src/hash_ring.rs, lib/common/common/src/stable_hash.rs, the `hashring` crate
0.3 it builds on, and `StableHash for ExtendedPointId` in lib/segment/src/types.rs):
- the ring is "fair": every shard id is placed `HASH_RING_SHARD_SCALE` = 100 times, at the hash of (shard, index);
- hashes are SipHash-2-4 with the all-zero key (`BuildHasherDefault<SipHasher24>`), fed the StableHash bytes:
  (shard u32, index u32) little-endian for a ring node; for an id, a u64 discriminant (0 = number, 1 = UUID), then
  the u64 number, or the UUID's byte length as u64 followed by its 16 bytes;
- a key belongs to the first node at or after its hash, wrapping to the first node.
So the same id lands in the same shard as on a Qdrant server with the same shard ids (0..S-1 for auto sharding;
custom shard keys get consecutive ids from 1, as Qdrant numbers them).
Simplified: no resharding (Qdrant keeps two rings while a reshard runs); little-endian only, as on x86/ARM Qdrant.

Hashing runs vectorised over a batch (numpy uint64 arithmetic wraps like Rust's wrapping_add), so routing an
upsert page costs microseconds per point rather than a Python SipHash per id.
"""

from __future__ import annotations

import struct
import uuid
from typing import Iterable, Sequence, Union, cast

import numpy as np

PointId = Union[int, uuid.UUID]

HASH_RING_SHARD_SCALE = 100  # Qdrant's HashRingRouter::single(): 100 ring positions per shard

_MASK = (1 << 64) - 1
_C0, _C1, _C2, _C3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-2-4 of `data` (the reference definition; the batch version below must agree with it)."""
    v0, v1, v2, v3 = k0 ^ _C0, k1 ^ _C1, k0 ^ _C2, k1 ^ _C3
    whole = len(data) - len(data) % 8
    for (m,) in struct.iter_unpack("<Q", data[:whole]):
        v3 ^= m
        v0, v1, v2, v3 = _round(*_round(v0, v1, v2, v3))
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _round(*_round(v0, v1, v2, v3))
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _np_rotl(x: np.ndarray, b: int) -> np.ndarray:
    return (x << np.uint64(b)) | (x >> np.uint64(64 - b))


def _np_round(v: list[np.ndarray]) -> None:
    v0, v1, v2, v3 = v
    v0 += v1
    v1 = _np_rotl(v1, 13) ^ v0
    v0 = _np_rotl(v0, 32)
    v2 += v3
    v3 = _np_rotl(v3, 16) ^ v2
    v0 += v3
    v3 = _np_rotl(v3, 21) ^ v0
    v2 += v1
    v1 = _np_rotl(v1, 17) ^ v2
    v2 = _np_rotl(v2, 32)
    v[:] = [v0, v1, v2, v3]


def siphash24_words(words: np.ndarray) -> np.ndarray:
    """SipHash-2-4 (zero key) of each row of `words` (n x m uint64): messages of exactly 8*m bytes."""
    n, m = words.shape
    with np.errstate(over="ignore"):
        v = [np.full(n, c, dtype=np.uint64) for c in (_C0, _C1, _C2, _C3)]
        for j in range(m):
            w = words[:, j]
            v[3] ^= w
            _np_round(v)
            _np_round(v)
            v[0] ^= w
        b = np.uint64(((8 * m) & 0xFF) << 56)
        v[3] ^= b
        _np_round(v)
        _np_round(v)
        v[0] ^= b
        v[2] ^= np.uint64(0xFF)
        for _ in range(4):
            _np_round(v)
        return v[0] ^ v[1] ^ v[2] ^ v[3]


def point_id_hashes(ids: Sequence[PointId]) -> np.ndarray:
    """The ring hash of each point id, as Qdrant's `StableHash for ExtendedPointId` feeds SipHash."""
    out = np.empty(len(ids), dtype=np.uint64)
    nums = [(i, pid) for i, pid in enumerate(ids) if type(pid) is int]
    if nums:
        words = np.zeros((len(nums), 2), dtype=np.uint64)  # discriminant 0, then the number
        words[:, 1] = np.fromiter((pid for _, pid in nums), dtype=np.uint64, count=len(nums))
        out[[i for i, _ in nums]] = siphash24_words(words)
    uuids = [(i, cast(uuid.UUID, pid)) for i, pid in enumerate(ids) if type(pid) is not int]  # PointId: int | UUID
    if uuids:
        raw = np.frombuffer(b"".join(pid.bytes for _, pid in uuids), dtype="<u8").reshape(len(uuids), 2)
        words = np.empty((len(uuids), 4), dtype=np.uint64)
        words[:, 0] = 1  # discriminant for UUID
        words[:, 1] = 16  # its byte length, as usize (kept by Qdrant for compatibility with uuid <= 1.16)
        words[:, 2:] = raw
        out[[i for i, _ in uuids]] = siphash24_words(words)
    return out


class HashRing:
    """Qdrant's fair hash ring over a set of shard ids."""

    def __init__(self, shard_ids: Iterable[int], scale: int = HASH_RING_SHARD_SCALE) -> None:
        shards = sorted(set(shard_ids))
        if not shards:
            raise ValueError("a hash ring needs at least one shard")
        pairs = np.array([(shard, idx) for shard in shards for idx in range(scale)], dtype=np.uint64)
        keys = siphash24_words((pairs[:, 0] | (pairs[:, 1] << np.uint64(32))).reshape(-1, 1))
        order = np.argsort(keys, kind="stable")
        self.shard_ids: tuple[int, ...] = tuple(shards)
        self._keys = keys[order]
        self._owners = pairs[order, 0].astype(np.int64)

    def shards_for(self, ids: Sequence[PointId]) -> np.ndarray:
        """The owning shard id of each point id (an int64 array aligned with `ids`)."""
        if len(self.shard_ids) == 1:
            return np.full(len(ids), self.shard_ids[0], dtype=np.int64)
        pos = np.searchsorted(self._keys, point_id_hashes(ids), side="left")
        pos[pos == len(self._keys)] = 0
        return self._owners[pos]

    def shard_for(self, pid: PointId) -> int:
        return int(self.shards_for([pid])[0])
