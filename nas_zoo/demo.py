"""A forward pass of every registered zoo model at its eval resolution (the zoo's smoke run)."""
import time

import timm
import torch

from .registry import list_entries


def main() -> int:
    torch.manual_seed(0)
    for entry in sorted(list_entries(), key=lambda e: e.name):
        cfg = entry.pretrained.get(entry.default_tag or "", {})
        size = tuple(cfg.get("input_size", (3, 224, 224)))
        model = timm.create_model(entry.name).eval()
        start = time.perf_counter()
        with torch.no_grad():
            out = model(torch.randn(1, *size))
        print(f"{entry.name:<22} input {size} -> logits {tuple(out.shape)} in {time.perf_counter() - start:.3f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
