"""Where `pretrained=True` weights come from, in order:

1. an explicit file (``pretrained_cfg_overlay=dict(file=PATH)``): an official checkpoint exactly as its training
   code saved it, a bare state dict, or a safetensors file in our key layout;
2. the entry's Hugging Face hub id (``nas-zoo/<name>.<tag>``, ``@revision`` pins a revision), which includes the
   local HF cache, so ``HF_HUB_OFFLINE=1`` works once the weights were downloaded or seeded.

When nothing can be found, one `WeightsNotFoundError` says where it looked and how to get the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .checkpoint import CheckpointError, check_state_dict, extract_state_dict, read_checkpoint
from .entry import ArchEntry
from .families import adapt_official_state_dict

__all__ = ["WeightsNotFoundError", "load_pretrained_state_dict", "load_official_checkpoint", "split_hub_id"]

HF_WEIGHTS_FILE = "model.safetensors"


class WeightsNotFoundError(RuntimeError):
    """No source of pretrained weights could be reached."""


def split_hub_id(hub_id: str) -> Tuple[str, Optional[str]]:
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def official_use_ema(entry: ArchEntry, tag: Optional[str]) -> Optional[bool]:
    cfg = entry.pretrained.get(tag or entry.default_tag or "", {})
    choice = cfg.get("official_weights")
    return None if choice is None else choice == "state_dict_ema"


def load_official_checkpoint(entry: ArchEntry, path, use_ema: Optional[bool] = None,
                             tag: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file in any accepted format and return a state dict in our key layout, checked
    against the entry's architecture."""
    from .registry import reference_state_shapes

    obj = read_checkpoint(path)
    if use_ema is None:
        # the copy the official evaluation used, when the file has it; otherwise whatever weights it holds
        preferred = official_use_ema(entry, tag)
        try:
            state_dict, _ = extract_state_dict(obj, use_ema=preferred, source=str(path))
        except CheckpointError:
            state_dict, _ = extract_state_dict(obj, use_ema=None, source=str(path))
    else:
        state_dict, _ = extract_state_dict(obj, use_ema=use_ema, source=str(path))
    try:
        state_dict = adapt_official_state_dict(state_dict, entry, tag)
    except CheckpointError as e:  # families know what is wrong, not which file it came from
        raise CheckpointError(f"{path}: {e}") from None
    check_state_dict(state_dict, reference_state_shapes(entry.name), entry.name, source=str(path))
    return state_dict


def _how_to_get(entry: ArchEntry, tag: Optional[str]) -> str:
    cfg = entry.pretrained.get(tag or "", {})
    lines = []
    if cfg.get("official_download"):
        lines.append(f"  download the official checkpoint: {cfg['official_download']}")
        lines.append(f"  then load it directly: timm.create_model('{entry.name}', pretrained=True, "
                     "pretrained_cfg_overlay=dict(file='PATH'))")
        lines.append(f"  or convert it once for the hub layout: nas-zoo convert {entry.name} PATH --out DIR")
    else:
        lines.append(f"  pass a checkpoint: timm.create_model('{entry.name}', pretrained=True, "
                     "pretrained_cfg_overlay=dict(file='PATH'))")
    return "\n".join(lines)


def load_pretrained_state_dict(entry: ArchEntry, cfg: dict, cache_dir=None,
                               use_ema: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    tag = cfg.get("tag")
    if cfg.get("file"):
        return load_official_checkpoint(entry, cfg["file"], use_ema=use_ema, tag=tag)
    tried: List[str] = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        path, why = _hub_file(hub_id, cfg.get("hf_hub_filename") or HF_WEIGHTS_FILE, cache_dir)
        if path is not None:
            return load_official_checkpoint(entry, path, use_ema=False, tag=tag)
        tried.append(f"  Hugging Face hub '{hub_id}' (and the local HF cache): {why}")
    if not tried:
        tried.append("  the entry names no weight source (no hf_hub_id, no file)")
    raise WeightsNotFoundError(
        f"no pretrained weights found for '{entry.name}" + (f".{tag}'" if tag else "'") + ". Looked in:\n"
        + "\n".join(tried) + "\nTo get them:\n" + _how_to_get(entry, tag))


def _hub_file(hub_id: str, filename: str, cache_dir=None) -> Tuple[Optional[Path], str]:
    """Download (or find in the cache) one file of a hub repo; (path, '') or (None, why not)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                            OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        return None, f"huggingface_hub is not importable ({e})"
    repo_id, revision = split_hub_id(hub_id)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)), ""
    except LocalEntryNotFoundError:
        return None, (f"'{filename}' is not in the local cache and the hub cannot be reached "
                      "(offline, or HF_HUB_OFFLINE=1)")
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        return None, f"{type(e).__name__}: the repository or revision does not exist or is private"
    except EntryNotFoundError:
        return None, f"the repository has no '{filename}'"
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreachable'}"
