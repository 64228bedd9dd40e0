"""Where `pretrained=True` weights come from, in order:

1. an explicit file (``pretrained_cfg_overlay=dict(file=PATH)``): an official checkpoint exactly as its training
   code saved it, a bare state dict, a safetensors file in our key layout, or a folder written by
   ``nas-zoo convert`` (its ``model.safetensors``; also what timm's ``local-dir:`` source passes);
2. the entry's Hugging Face hub id (``nas-zoo/<name>.<tag>``, ``@revision`` pins a revision), which includes the
   local HF cache, so ``HF_HUB_OFFLINE=1`` works once the weights were downloaded or seeded.

When nothing can be found, one `WeightsNotFoundError` says where it looked and how to get the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .checkpoint import CheckpointError, check_state_dict, extract_state_dict, read_checkpoint
from .entry import ArchEntry
from .errors import NasZooError
from .families import adapt_official_state_dict

__all__ = ["WeightsNotFoundError", "load_pretrained_state_dict", "load_official_checkpoint", "split_hub_id",
           "weights_file_in", "official_state_dict"]

HF_WEIGHTS_FILE = "model.safetensors"
# what a model folder may hold, in the order timm's local-dir loader prefers them
FOLDER_WEIGHT_FILES = (HF_WEIGHTS_FILE, "pytorch_model.bin", "pytorch_model.pth", "model.pth")


class WeightsNotFoundError(NasZooError, RuntimeError):
    """No source of pretrained weights could be reached."""


def split_hub_id(hub_id: str) -> Tuple[str, Optional[str]]:
    repo_id, _, revision = hub_id.partition("@")
    return repo_id, revision or None


def official_use_ema(entry: ArchEntry, tag: Optional[str]) -> Optional[bool]:
    cfg = entry.pretrained.get(tag or entry.default_tag or "", {})
    choice = cfg.get("official_weights")
    return None if choice is None else choice == "state_dict_ema"


def weights_file_in(folder) -> Path:
    """The weights file of a model folder (``model.safetensors`` first, as timm's local-dir loader)."""
    folder = Path(folder)
    for name in FOLDER_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: a model folder needs one of {list(FOLDER_WEIGHT_FILES)}; "
                          f"it has {sorted(p.name for p in folder.iterdir())[:10]}")


Shapes = Mapping[str, Tuple[int, ...]]


def load_official_checkpoint(entry: ArchEntry, path, expected: Union[Shapes, Sequence[Shapes]],
                             use_ema: Optional[bool] = None, tag: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a checkpoint file (or a model folder) in any accepted format and return a state dict in our key
    layout, checked against `expected` (key -> shape, from the registry; or several accepted layouts, e.g. the
    released head and the head the caller asked for)."""
    return official_state_dict(entry, path, expected, use_ema=use_ema, tag=tag)[0]


def official_state_dict(entry: ArchEntry, path, expected: Union[Shapes, Sequence[Shapes]],
                        use_ema: Optional[bool] = None,
                        tag: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], str]:
    """`load_official_checkpoint`, also returning where in the file the weights were found
    (e.g. 'state_dict_ema', '<bare state dict>')."""
    if Path(path).is_dir():
        path = weights_file_in(path)
    obj = read_checkpoint(path)
    if use_ema is None:
        # the copy the official evaluation used, when the file has it; otherwise whatever weights it holds
        preferred = official_use_ema(entry, tag)
        try:
            state_dict, key = extract_state_dict(obj, use_ema=preferred, source=str(path))
        except CheckpointError:
            state_dict, key = extract_state_dict(obj, use_ema=None, source=str(path))
    else:
        state_dict, key = extract_state_dict(obj, use_ema=use_ema, source=str(path))
    try:
        state_dict = adapt_official_state_dict(state_dict, entry, tag)
    except CheckpointError as e:  # families know what is wrong, not which file it came from
        raise CheckpointError(f"{path}: {e}") from None
    layouts = [expected] if isinstance(expected, Mapping) else list(expected)
    for alternative in layouts[1:]:
        if all(k in state_dict and tuple(state_dict[k].shape) == tuple(s) for k, s in alternative.items()) \
                and len(state_dict) == len(alternative):
            return state_dict, key
    check_state_dict(state_dict, layouts[0], entry.name, source=str(path))
    return state_dict, key


def _cache_repo_folder(path) -> Path:
    """models--ORG--NAME of a file inside the HF cache (snapshots/<commit>/<file>), else the file itself."""
    path = Path(path)
    for parent in path.parents:
        if parent.name.startswith("models--"):
            return parent
    return path


def _how_to_get(entry: ArchEntry, tag: Optional[str], hub_id: Optional[str]) -> str:
    cfg = entry.pretrained.get(tag or "", {})
    lines = []
    if cfg.get("official_download"):
        lines.append(f"  download the official checkpoint: {cfg['official_download']}")
        lines.append(f"  then load it directly: timm.create_model('{entry.name}', pretrained=True, "
                     "pretrained_cfg_overlay=dict(file='PATH'))")
        lines.append(f"  or convert it once: nas-zoo convert {entry.name} PATH --out DIR, then pass file='DIR' "
                     "the same way" + (f", or publish DIR: nas-zoo push DIR --repo-id {split_hub_id(hub_id)[0]}"
                                       if hub_id else ""))
    else:
        lines.append(f"  pass a checkpoint: timm.create_model('{entry.name}', pretrained=True, "
                     "pretrained_cfg_overlay=dict(file='PATH'))")
    if hub_id:
        lines.append("  weights already downloaded elsewhere: point HF_HUB_CACHE (or cache_dir=) at that cache")
    return "\n".join(lines)


def load_pretrained_state_dict(entry: ArchEntry, cfg: dict, expected: Union[Shapes, Sequence[Shapes]],
                               cache_dir=None, use_ema: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    tag = cfg.get("tag")
    if cfg.get("file"):
        return load_official_checkpoint(entry, cfg["file"], expected, use_ema=use_ema, tag=tag)
    tried: List[str] = ["  an explicit file: none given (pretrained_cfg_overlay=dict(file=PATH))"]
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        path, why = _hub_file(hub_id, cfg.get("hf_hub_filename") or HF_WEIGHTS_FILE, cache_dir)
        if path is not None:
            try:
                return load_official_checkpoint(entry, path, expected, use_ema=False, tag=tag)
            except CheckpointError as e:
                raise CheckpointError(f"{e}\n(from the Hugging Face hub '{hub_id}': the copy in the local HF "
                                      f"cache may be damaged; delete {_cache_repo_folder(path)} to download it "
                                      "again)") from None
        tried.append(f"  the Hugging Face hub '{hub_id}' and the local HF cache ({_cache_location(cache_dir)}): "
                     f"{why}")
    else:
        tried.append("  the Hugging Face hub: the entry names no hf_hub_id")
    raise WeightsNotFoundError(
        f"no pretrained weights found for '{entry.name}" + (f".{tag}'" if tag else "'") + ". Looked in:\n"
        + "\n".join(tried) + "\nTo get them:\n" + _how_to_get(entry, tag, hub_id))


def _cache_location(cache_dir=None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _hub_file(hub_id: str, filename: str, cache_dir=None) -> Tuple[Optional[Path], str]:
    """Find one file of a hub repo in the local HF cache, else download it; (path, '') or (None, why not).

    The cache is looked at first, without any network call, so cached weights load at once offline. The
    download is preceded by one metadata request without huggingface_hub's retries: an unreachable hub is
    reported at once instead of after half a minute of retrying. (A cached copy is used as it is; delete it or
    pin `@revision` in the hub id to get another.)
    """
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, \
            try_to_load_from_cache
        from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                           OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        return None, f"huggingface_hub is not importable ({e})"
    repo_id, revision = split_hub_id(hub_id)
    cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return Path(cached), ""
    not_cached = f"'{filename}' is not in the local cache"
    if constants.HF_HUB_OFFLINE:
        return None, f"{not_cached} and HF_HUB_OFFLINE=1 forbids downloading it"
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
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
    except Exception as e:  # the HTTP client's own transport errors (no network, DNS, TLS, timeouts)
        first = str(e).splitlines()[0] if str(e) else "unreachable"
        return None, f"{not_cached} and the hub cannot be reached ({type(e).__name__}: {first})"
