"""What an embedding worker hands the writer when a point gets more than one new vector (hybrid: a sparse vector,
with or without a new dense one). Plain numpy so it crosses Ray cheaply and needs no protobuf on the workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VectorSet:
    dense: np.ndarray | None  # [n, dim] float32, or None when no dense vector is made
    sparse: list[tuple[np.ndarray, np.ndarray]] | None  # n rows of (indices uint32, values float32)

    def __len__(self) -> int:
        if self.dense is not None:
            return int(self.dense.shape[0])
        return len(self.sparse or [])
