"""The embedding worker's job, whatever the strategy: a dense model over texts, a sparse encoder (hybrid), both, or
a shortcut that turns the stored old vectors into new ones without a model (Matryoshka truncation, a learned
linear map).

`build_vectorizer(spec)` takes one plain dict so it can be shipped to a Ray actor:
  {"dense": <model spec for engine.embed.build_embedder> | None  (kind late_interaction: a multivector per text),
   "sparse": <spec for engine.embed.sparse.build_sparse> | None,
   "shortcut": {"kind": "matryoshka", "dim", "normalize"} | {"kind": "linear_map", "matrix", "bias", "normalize",
                "digest"} | None}
With a shortcut, the inputs are the stored vectors (a list of float32 rows) rather than texts.

What `embed` returns: a float32 array [n, dim] for a dense model alone (the common case, kept a plain array so it
crosses Ray as one buffer), else a VectorSet: a sparse vector beside it (hybrid), or a late-interaction model's token
matrices in `VectorSet.multi` (the writer tells a multivector from a dense vector by where it finds it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from engine.embed.base import truncate_and_normalize
from engine.embed.vectorset import MultiVectors, VectorSet
from engine.errors import ModelError


class Shortcut:
    """Old stored vectors -> new vectors on the CPU."""

    def __init__(self, spec: dict) -> None:
        self.kind = spec["kind"]
        self.normalize = bool(spec.get("normalize", True))
        self.matrix: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        if self.kind == "matryoshka":
            self.dim = int(spec["dim"])
        elif self.kind == "linear_map":
            self.matrix = np.asarray(spec["matrix"], dtype=np.float32)
            self.bias = None if spec.get("bias") is None else np.asarray(spec["bias"], dtype=np.float32)
            self.dim = int(self.matrix.shape[1])
        else:
            raise ModelError(f"unknown shortcut kind {self.kind!r}; use matryoshka or linear_map")
        self._desc = {"kind": f"shortcut:{self.kind}", "dim": self.dim, "normalize": self.normalize,
                      "fingerprint": spec.get("digest")}

    def apply(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        if not len(rows):
            return np.zeros((0, self.dim), dtype=np.float32)
        x = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
        if self.kind == "matryoshka":
            if x.shape[1] < self.dim:
                raise ModelError(f"shortcut.dim {self.dim} is larger than the stored vectors ({x.shape[1]}-d); "
                                 "lower shortcut.dim")
            return truncate_and_normalize(x, self.dim, self.normalize)
        assert self.matrix is not None
        if x.shape[1] != self.matrix.shape[0]:
            raise ModelError(f"the linear map expects {self.matrix.shape[0]}-d vectors but the stored ones are "
                             f"{x.shape[1]}-d; fit the map again (reembed fit-map)")
        y = x @ self.matrix
        if self.bias is not None:
            y = y + self.bias
        return truncate_and_normalize(y, None, self.normalize)

    def describe(self) -> dict:
        return dict(self._desc)


class Vectorizer:
    def __init__(self, spec: dict) -> None:
        self.dense = None
        self.sparse = None
        self.shortcut = Shortcut(spec["shortcut"]) if spec.get("shortcut") else None
        if self.shortcut is None and spec.get("dense"):
            from engine.embed import build_embedder

            self.dense = build_embedder(spec["dense"])
        if spec.get("sparse"):
            from engine.embed.sparse import build_sparse

            self.sparse = build_sparse(spec["sparse"])
        if self.shortcut is None and self.dense is None and self.sparse is None:
            raise ValueError("vectorizer spec makes no vectors; give dense, sparse or shortcut")
        self.dim = self.shortcut.dim if self.shortcut else (self.dense.dim if self.dense else None)

    def embed(self, inputs: Sequence[Any]) -> np.ndarray | VectorSet:
        if self.shortcut is not None:
            return self.shortcut.apply(inputs)
        made = self.dense.embed(inputs) if self.dense is not None else None
        multi = made if isinstance(made, MultiVectors) else None
        dense = None if multi is not None else made
        if self.sparse is None and multi is None:
            return dense  # type: ignore[return-value]
        sparse = self.sparse.encode(inputs) if self.sparse is not None else None
        return VectorSet(dense=dense, sparse=sparse, multi=multi)

    def describe(self) -> dict:
        if self.shortcut is not None:
            out = self.shortcut.describe()
        elif self.dense is not None:
            out = dict(self.dense.describe())
        else:
            out = {"kind": "sparse-only", "dim": None}
        if self.sparse is not None:
            out["sparse"] = self.sparse.describe()
        return out


def build_vectorizer(spec: dict) -> Vectorizer:
    return Vectorizer(spec)
