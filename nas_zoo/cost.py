"""Model cost: parameters and multiply-accumulates (MACs) counted by `torch.utils.flop_counter`.

MACs are those of convolutions and matrix products (conv + linear), the convention used across the zoo's
tables; papers often add BN, bias and pooling terms, so their figures are shown beside ours, not replaced.
Counting runs on the meta device: no memory for activations, no arithmetic.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1) -> int:
    """MACs of one forward pass of `batch_size` images of `input_size` (C, H, W), per image."""
    was_training = model.training
    model.eval()
    try:
        meta_model = _to_meta(model)
        x = torch.zeros((batch_size, *input_size), device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta_model(x)
        return counter.get_total_flops() // 2 // batch_size
    finally:
        model.train(was_training)


def _to_meta(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself if it already lives on the meta device, else a structural copy there (no weight data)."""
    import copy
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "meta" for t in tensors):
        return model
    memo = {id(t): (torch.nn.Parameter(t.to("meta"), requires_grad=t.requires_grad)
                    if isinstance(t, torch.nn.Parameter) else t.to("meta")) for t in tensors}
    return copy.deepcopy(model, memo)
