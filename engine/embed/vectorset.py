"""What an embedding worker hands the writer when a point gets more than one new vector, or a vector that is not one
row: a sparse vector (hybrid, with or without a new dense one), or a late-interaction multivector (one row per
token, a different number of rows per point). Plain numpy so it crosses Ray cheaply and needs no protobuf on the
workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MultiVectors:
    """Ragged per-text token matrices in one buffer: text i owns rows data[offsets[i]:offsets[i + 1]].

    One float32 block and one int64 index instead of a list of arrays, because a page of 1024 points would
    otherwise pickle as 1024 objects on every hop through the Ray object store; two arrays pickle as two buffers.
    """

    data: np.ndarray  # float32 [total_tokens, dim], C-contiguous
    offsets: np.ndarray  # int64 [n + 1], offsets[0] == 0, non-decreasing, offsets[-1] == total_tokens

    def __post_init__(self) -> None:
        data, offsets = self.data, self.offsets
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype != np.float32 \
                or not data.flags.c_contiguous:
            raise ValueError("MultiVectors.data must be a C-contiguous float32 array [total_tokens, dim]")
        if not isinstance(offsets, np.ndarray) or offsets.ndim != 1 or offsets.dtype != np.int64 \
                or len(offsets) < 1:
            raise ValueError("MultiVectors.offsets must be an int64 array [n + 1]")
        if offsets[0] != 0 or offsets[-1] != data.shape[0] or (len(offsets) > 1 and np.any(np.diff(offsets) < 0)):
            raise ValueError(f"MultiVectors.offsets must rise from 0 to {data.shape[0]} (the data's rows)")

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], dim: int | None = None) -> "MultiVectors":
        """One matrix [tokens_i, dim] per text; `dim` is needed only when `rows` is empty."""
        if not len(rows):
            if dim is None:
                raise ValueError("MultiVectors.from_rows needs dim when there are no rows")
            return cls.empty(dim)
        mats = [np.asarray(r, dtype=np.float32) for r in rows]
        width = mats[0].shape[-1]
        for i, m in enumerate(mats):
            if m.ndim != 2 or m.shape[1] != width:
                raise ValueError(f"row {i} has shape {m.shape}; every row must be [tokens, {width}]")
        if dim is not None and width != dim:
            raise ValueError(f"rows are {width}-d, not {dim}-d")
        offsets = np.zeros(len(mats) + 1, dtype=np.int64)
        np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
        return cls(np.ascontiguousarray(np.concatenate(mats, axis=0), dtype=np.float32), offsets)

    @classmethod
    def empty(cls, dim: int) -> "MultiVectors":
        return cls(np.zeros((0, dim), dtype=np.float32), np.zeros(1, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.data.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Rows per text, int64 [n]."""
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """Text i's token matrix [tokens_i, dim], a view into `data` (no copy)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} texts")
        i %= n
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def slice(self, start: int, stop: int) -> "MultiVectors":
        """Texts [start, stop) sharing this buffer, e.g. a page cut into write requests."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return MultiVectors(self.data[lo:hi], self.offsets[start:stop + 1] - lo)


@dataclass
class VectorSet:
    dense: np.ndarray | None  # [n, dim] float32, or None when no dense vector is made
    sparse: list[tuple[np.ndarray, np.ndarray]] | None  # n rows of (indices uint32, values float32)
    multi: MultiVectors | None = None  # late-interaction token vectors, or None when none are made

    def __len__(self) -> int:
        if self.dense is not None:
            return int(self.dense.shape[0])
        if self.sparse is not None:
            return len(self.sparse)
        return len(self.multi) if self.multi is not None else 0
