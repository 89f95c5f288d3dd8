"""Token embeddings → one vector per text, the way sentence-transformers' Pooling module computes it.

Sums and divisions run in float32 even when the model runs in bf16/fp16 (a 512-token mean in bf16 loses ~3
significant bits). Every mode works for right- or left-padded batches, as decoder-based embedders pad left.
"""

from __future__ import annotations

from typing import Sequence

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """hidden [B, L, H] (any float dtype), mask [B, L] (1 = real token) → float32 [B, H × len(modes)]."""
    hidden = hidden.float()
    maskf = mask.to(hidden.dtype).unsqueeze(-1)
    out: list[torch.Tensor] = []
    mean_sum = counts = None
    for mode in modes:
        if mode == "cls":
            # The first real token: position 0 with right padding, the first unmasked one with left padding.
            first = mask.to(torch.int32).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), first])
        elif mode == "lasttoken":
            seq_len = mask.shape[1]
            values, flipped = mask.flip(1).max(dim=1)
            last = seq_len - 1 - flipped
            # A text with no real token (possible only for tokenizers that add no special tokens) pools to zeros.
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            out.append(picked * values.to(hidden.dtype).unsqueeze(-1))
        elif mode == "max":
            out.append(hidden.masked_fill(maskf == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            if mean_sum is None:
                mean_sum = (hidden * maskf).sum(dim=1)
                counts = maskf.sum(dim=1).clamp(min=1e-9)
            assert counts is not None  # set together with mean_sum
            out.append(mean_sum / (counts if mode == "mean" else counts.sqrt()))
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
            # Weights count from the first real token, so left padding does not change them.
            pad_lengths = mask.to(torch.int32).argmax(dim=1).to(hidden.dtype).view(-1, 1, 1)
            weights = maskf * (positions - pad_lengths)
            out.append((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
