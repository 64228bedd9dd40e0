"""Reading checkpoints safely: official training-code files as released, bare state dicts, safetensors.

Official files are pickles holding more than tensors (DNA and Cream: an ``argparse.Namespace`` or a yacs
``CfgNode`` under ``args``). They are read with ``torch.load(weights_only=True)`` and an allow-list:
``argparse.Namespace`` as itself and ``yacs.config.CfgNode`` read as a plain ``OrderedDict`` (a CfgNode is a
dict subclass), so yacs need not be installed and no code from the file ever runs.
"""
from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from .errors import NasZooError
from .io import atomic_write_bytes

__all__ = ["CheckpointError", "read_checkpoint", "extract_state_dict", "check_state_dict"]

# Where training scripts put the weights inside their checkpoint dicts, EMA copies first.
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# 'model_main': the CDARTS retrain resume files ({'model_main': ..., 'optimizer': ..., ...})
PLAIN_KEYS = ("state_dict", "model", "net", "weights", "model_main")
ALLOWED_GLOBALS = [argparse.Namespace, (OrderedDict, "yacs.config.CfgNode")]


class CheckpointError(NasZooError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path) -> object:
    """Load a checkpoint file without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if not refused:  # a broken pickle stream, not a refused object
            raise CheckpointError(_unreadable(path, e)) from None
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects outside the allow-list "
            f"(tensors, containers, argparse.Namespace, yacs CfgNode). {refused[0]}"
        ) from None
    except Exception as e:  # torch.load reports foreign bytes as anything (KeyError: 101 for a text file)
        raise CheckpointError(_unreadable(path, e)) from None


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load could not read a file: it is text, empty, or bytes of no checkpoint format (damaged)."""
    with open(path, "rb") as f:
        head = f.read(512)
    text = _as_text(head)
    if not head:
        return f"not a checkpoint: {path} is empty"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        kind = "zip archive" if head[:2] == b"PK" else "pickle"
        lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("Check the")]
        return (f"not a checkpoint: {path} is a damaged or truncated PyTorch file (a {kind} that torch.load cannot "
                f"read: {type(error).__name__}: {lines[-1].split('. ')[0][:120] if lines else ''})")
    if text is not None:
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"not a checkpoint: {path} is a text file (it starts {first!r})"
    return (f"not a checkpoint: {path} is damaged or another kind of file (neither a PyTorch zip archive, "
            "a pickle nor safetensors)")


def _as_text(head: bytes) -> Optional[str]:
    """`head` as text when it is printable UTF-8 (a multi-byte character cut at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return None
        text = head[:e.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\n\r" for c in text) else None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj, use_ema: Optional[bool] = None, source: str = "checkpoint") -> Tuple[Dict, str]:
    """Find the weights inside a checkpoint object.

    use_ema: True takes an EMA copy (error if there is none), False the plain weights, None the EMA copy when
    present else the plain weights. Returns (state_dict with any ``module.`` prefix removed, the key used).
    """
    if _is_state_dict(obj):
        if use_ema:
            raise CheckpointError(f"{source}: EMA weights were asked for, but the file is a bare state dict")
        return strip_prefix(dict(obj)), "<bare state dict>"
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or a dict holding one, got {type(obj).__name__}")
    ema = next((k for k in EMA_KEYS if _is_state_dict(obj.get(k))), None)
    plain = next((k for k in PLAIN_KEYS if _is_state_dict(obj.get(k))), None)
    if use_ema is True:
        key = ema
        if key is None:
            raise CheckpointError(f"{source}: EMA weights were asked for, but none of {list(EMA_KEYS)} is in the "
                                  f"file (it has {sorted(map(str, obj))[:10]})")
    elif use_ema is False:
        key = plain
        if key is None:
            raise CheckpointError(f"{source}: no plain weights: none of {list(PLAIN_KEYS)} in the file "
                                  f"(it has {sorted(map(str, obj))[:10]})")
    else:
        key = ema or plain
        if key is None:
            raise CheckpointError(f"{source}: no weights found: expected a state dict or one of "
                                  f"{list(EMA_KEYS + PLAIN_KEYS)} (the file has {sorted(map(str, obj))[:10]})")
    return strip_prefix(dict(obj[key])), key


def strip_prefix(state_dict: Dict, prefix: str = "module.") -> Dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def check_state_dict(state_dict: Mapping, expected: Mapping[str, Tuple[int, ...]], model_name: str,
                     source: str = "checkpoint", show: int = 5) -> None:
    """Raise one CheckpointError naming the first offending keys when `state_dict` does not fit `expected`."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}"
                  for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches (checkpoint vs model)", mismatched)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {what}: {', '.join(items[:show])}{more}")
    raise CheckpointError(f"{source} does not fit model '{model_name}': " + "; ".join(parts))


def save_file_atomic(state_dict: Mapping[str, torch.Tensor], path, metadata: Optional[dict] = None) -> Path:
    """Write a safetensors file via a temp file + rename, so readers never see half a file."""
    from safetensors.torch import save
    data = save({k: v.contiguous() for k, v in state_dict.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)
