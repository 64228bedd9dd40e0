"""Model folders in timm's Hugging Face layout: convert official checkpoints into them, check them, card them.

A folder written by `convert_checkpoint` holds::

    model.safetensors   the weights in our key layout (what `timm.create_model(NAME).state_dict()` has)
    config.json         timm's format; `architecture` is the family's generic entrypoint (``nas_zoo_<family>``)
                        and ``model_args.nas_zoo_entry`` the whole entry, so the model rebuilds from this file
                        alone, on a machine where the entry was never registered
    README.md           the model card: YAML metadata (library_name timm, license, tags, datasets, model-index
                        with the paper's numbers and, once `nas-zoo validate --model-card` ran, ours)

`timm.create_model('hf-hub:ORG/NAME')` (after ``import nas_zoo``) and ``local-dir:FOLDER`` read it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import timm
import torch
import yaml

from . import __version__
from .checkpoint import CheckpointError, save_file_atomic
from .errors import NasZooError
from .io import atomic_write_text
from .entry import ArchEntry, EntryError, load_entry
from .families import get_family
from .registry import ENTRY_ARG, create_from_entry, family_architecture, get_entry, reference_state_shapes
from .weights import HF_WEIGHTS_FILE, official_state_dict

__all__ = ["ConversionError", "FolderError", "convert_checkpoint", "check_model_folder", "load_model_folder",
           "render_model_card", "update_model_card", "resolve_entry", "default_repo_id", "MODEL_FILES"]

CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
MODEL_FILES = (HF_WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
RESULTS_BEGIN, RESULTS_END = "<!-- nas-zoo:results -->", "<!-- /nas-zoo:results -->"
PROBE_SEED = 0


class ConversionError(NasZooError):
    """A conversion that did not reproduce the official model exactly."""


class FolderError(NasZooError):
    """A model folder that is not fit to load or to publish; the message lists every problem found."""


def resolve_entry(name_or_path: Union[str, os.PathLike, ArchEntry]) -> ArchEntry:
    """A registered name (``name`` or ``name.tag``), or an entry YAML file (for a searched model)."""
    if isinstance(name_or_path, ArchEntry):
        return name_or_path
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_entry(text)
    return get_entry(text)


def default_repo_id(entry: ArchEntry, tag: Optional[str]) -> str:
    cfg = entry.pretrained.get(tag or "", {})
    if cfg.get("hf_hub_id"):
        return cfg["hf_hub_id"].partition("@")[0]
    return f"nas-zoo/{entry.name}.{tag}" if tag else f"nas-zoo/{entry.name}"


@dataclass
class ConversionReport:
    out_dir: Path
    entry: str
    tag: Optional[str]
    repo_id: str
    weights_key: str                 # where in the official file the weights were found
    source_sha256: str
    max_abs_diff: float              # converted vs official-format load, on the probe input (0.0 or it failed)
    probe_shape: tuple
    params: int
    macs: int
    files: Dict[str, int] = field(default_factory=dict)  # name -> bytes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _probe_input(input_size, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn((batch, *input_size), generator=gen)


def _entry_for_folder(entry: ArchEntry, tag: Optional[str], repo_id: str) -> dict:
    """The entry as config.json carries it: only the converted tag, its hub id set to where it is published."""
    data = entry.to_dict()
    cfg = dict(entry.pretrained.get(tag or "", {}))
    cfg["hf_hub_id"] = repo_id
    data["pretrained"] = {tag: cfg} if tag else {}
    return data


def convert_checkpoint(entry: Union[str, ArchEntry], checkpoint: Union[str, os.PathLike],
                       out_dir: Union[str, os.PathLike], use_ema: Optional[bool] = None,
                       tag: Optional[str] = None, repo_id: Optional[str] = None,
                       overwrite: bool = False) -> ConversionReport:
    """Official checkpoint -> model folder, verified: the folder, rebuilt from its config.json alone, must give
    bit-identical logits to the official file loaded directly, or `ConversionError` is raised and nothing is
    written to `out_dir`.

    use_ema: None takes what the official evaluation used (the entry records it), True/False force a copy.
    """
    from .cost import count_macs, count_params

    entry = resolve_entry(entry)
    tag = tag or entry.default_tag
    if tag is not None and entry.pretrained and tag not in entry.pretrained:
        raise EntryError(entry.source, "pretrained", f"no tag {tag!r}; expected one of {list(entry.pretrained)}")
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    existing = [name for name in MODEL_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise ConversionError(f"{out_dir} already holds {existing}; choose another --out or pass --overwrite")
    repo_id = repo_id or default_repo_id(entry, tag)

    _, weights_key = official_state_dict(entry, checkpoint, reference_state_shapes(entry), use_ema=use_ema, tag=tag)  # which copy, for the card
    # the official-format load, exactly as users do it
    official = create_from_entry(entry, pretrained=True, pretrained_cfg=tag or None,
                                 pretrained_cfg_overlay=dict(file=str(checkpoint)),
                                 use_ema=use_ema).eval()
    folder_entry = _entry_for_folder(entry, tag, repo_id)
    input_size = tuple(official.pretrained_cfg["input_size"])
    facts = {"params": count_params(official), "macs": count_macs(official, input_size),
             "weights_key": weights_key, "source_sha256": _sha256(checkpoint), "source_name": checkpoint.name}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file_atomic(official.state_dict(), staging / HF_WEIGHTS_FILE, metadata={"format": "pt"})
        write_config(official, entry, folder_entry, staging / CONFIG_FILE)
        _write_text(staging / CARD_FILE, render_model_card(load_entry(folder_entry, source=entry.source),
                                                           tag, repo_id, facts))
        rebuilt = load_model_folder(staging).eval()
        x = _probe_input(input_size)
        with torch.no_grad():
            want, got = official(x), rebuilt(x)
        diff = (want - got).abs().max().item()
        if not torch.equal(want, got):
            raise ConversionError(f"conversion of {checkpoint} for '{entry.name}' is not exact: the folder rebuilt "
                                  f"from config.json gives logits {diff:.3e} away from the official-format load "
                                  f"(probe input {tuple(x.shape)}); nothing was written")
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in MODEL_FILES:
            files[name] = (staging / name).stat().st_size
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConversionReport(out_dir=out_dir, entry=entry.name, tag=tag, repo_id=repo_id, weights_key=weights_key,
                            source_sha256=facts["source_sha256"], max_abs_diff=diff, probe_shape=tuple(x.shape),
                            params=facts["params"], macs=facts["macs"], files=files)


def write_config(model: torch.nn.Module, entry: ArchEntry, folder_entry: dict, path: Path) -> None:
    """timm's own config writer, then the architecture switched to the family's generic entrypoint."""
    from timm.models._hub import save_config_for_hf

    timm_written = path.with_name(f".{path.name}.timm")
    save_config_for_hf(model, str(timm_written), model_args={ENTRY_ARG: folder_entry})
    config = json.loads(timm_written.read_text())
    timm_written.unlink()
    config["architecture"] = family_architecture(entry.family)
    # only the entry: the generic entrypoint needs nothing else, and keyword arguments such as global_pool are
    # not accepted by every family's model class
    config["model_args"] = {ENTRY_ARG: folder_entry}
    _write_text(path, json.dumps(config, indent=2) + "\n")


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def load_model_folder(folder: Union[str, os.PathLike], pretrained: bool = True, **kwargs) -> torch.nn.Module:
    """Build the model of a folder from its config.json alone, through timm's own ``local-dir:`` source."""
    return timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=pretrained, **kwargs)


# ------------------------------------------------------------------------------------------------ model card

def _arxiv_url(arxiv: str) -> str:
    return f"https://arxiv.org/abs/{arxiv}"


def _method(entry: ArchEntry) -> Optional[str]:
    method = entry.provenance.get("method")
    return str(method) if method else None


def _paper(entry: ArchEntry, tag: Optional[str]) -> dict:
    """The entry's paper record, completed from the pretrained cfg's paper_name / paper_ids (timm's fields)."""
    cfg = entry.pretrained.get(tag or "", {})
    paper = dict(entry.paper)
    if not paper.get("title") and cfg.get("paper_name"):
        paper["title"] = cfg["paper_name"]
    ids = re.findall(r"arXiv:(\d{4}\.\d{4,5})", cfg.get("paper_ids", ""), flags=re.I)
    if not paper.get("arxiv") and ids:
        paper["arxiv"] = ids[0]
    return paper


def _card_metadata(entry: ArchEntry, tag: Optional[str], measured: Optional[dict]) -> dict:
    cfg = entry.pretrained.get(tag or "", {})
    paper = _paper(entry, tag)
    tags = ["image-classification", "timm", "nas-zoo", "neural-architecture-search"]
    if _method(entry):
        tags.append(_method(entry))
    if paper.get("arxiv"):
        tags.append(f"arxiv:{paper['arxiv']}")
    meta = {"library_name": "timm", "license": cfg.get("license") or "unknown", "tags": tags,
            "datasets": ["imagenet-1k"], "pipeline_tag": "image-classification"}
    metrics = []
    for key, label in (("top1", "top-1"), ("top5", "top-5")):
        if paper.get(key) is not None:
            metrics.append({"type": "accuracy", "name": f"{label} accuracy (paper)", "value": paper[key],
                            "verified": False})
    for key, label in (("top1", "top-1"), ("top5", "top-5")):
        if measured and measured.get(key) is not None:
            metrics.append({"type": "accuracy", "name": f"{label} accuracy (nas-zoo validate)",
                            "value": round(float(measured[key]), 3), "verified": False})
    if metrics:
        name = f"{entry.name}.{tag}" if tag else entry.name
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": "ImageNet-1k", "type": "imagenet-1k", "split": "validation"},
            "metrics": metrics}]}]
    return meta


def _results_block(entry: ArchEntry, measured: Optional[dict]) -> str:
    paper = entry.paper

    def fmt(v):
        return "-" if v is None else f"{float(v):.2f}"

    lines = [RESULTS_BEGIN, "| ImageNet-1k val | top-1 | top-5 | notes |", "|---|---|---|---|",
             f"| paper | {fmt(paper.get('top1'))} | {fmt(paper.get('top5'))} | {paper.get('source', '')} |"]
    if measured:
        note = (f"{measured.get('images', '?')} images, {measured.get('input_size', '')} "
                f"{measured.get('date', '')}").strip()
        lines.append(f"| ours (`nas-zoo validate`) | {fmt(measured.get('top1'))} | {fmt(measured.get('top5'))} "
                     f"| {note} |")
    else:
        lines.append("| ours | not measured yet | | `nas-zoo validate NAME --data DIR --model-card README.md` |")
    lines.append(RESULTS_END)
    return "\n".join(lines)


def render_model_card(entry: ArchEntry, tag: Optional[str], repo_id: str, facts: dict,
                      measured: Optional[dict] = None) -> str:
    """README.md of a model folder. `facts`: params, macs (counted), weights_key, source_sha256, source_name."""
    cfg = entry.pretrained.get(tag or "", {})
    paper = _paper(entry, tag)
    family = get_family(entry.family)
    meta = _card_metadata(entry, tag, measured)
    name = f"{entry.name}.{tag}" if tag else entry.name
    size = cfg.get("input_size", [3, 224, 224])
    paper_link = (f"[{paper.get('title', paper['arxiv'])}]({_arxiv_url(paper['arxiv'])})" if paper.get("arxiv")
                  else paper.get("title", "-"))
    paper_params = f" (paper: {paper['params_m']:g} M)" if paper.get("params_m") is not None else ""
    paper_flops = f" (paper: {paper['flops_m']:g} M" + (f"; {paper['flops_note']}" if paper.get("flops_note")
                                                        else "") + ")" if paper.get("flops_m") is not None else ""
    weights = f"converted from the official checkpoint `{facts.get('source_name', '?')}` " \
              f"(sha256 `{facts.get('source_sha256', '?')[:16]}…`), weights `{facts.get('weights_key', '?')}`"
    if cfg.get("official_note"):
        weights += f"; {cfg['official_note'].rstrip('.')}"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False, width=1000).rstrip(), "---",
        f"# Model card for {name}", "",
        entry.description or f"{entry.name}, a {entry.family}-family architecture.", "",
        "## Model details",
        f"- **Paper:** {paper_link}" + (f", {paper['venue']}" if paper.get("venue") else ""),
        f"- **Original code:** {cfg['origin_url']}" if cfg.get("origin_url") else None,
        f"- **Architecture:** {entry.family} family ({family.describe(entry.arch) or 'see config.json'}); the whole "
        f"architecture is in `config.json` (`model_args.{ENTRY_ARG}`)",
        f"- **Params (M):** {facts['params'] / 1e6:.3f}{paper_params}" if facts.get("params") else None,
        f"- **MACs (M):** {facts['macs'] / 1e6:.1f} at {size[1]}x{size[2]}, conv+linear, counted by "
        f"torch.utils.flop_counter{paper_flops}" if facts.get("macs") else None,
        f"- **Eval preprocessing:** {size[1]}x{size[2]}, {cfg.get('interpolation', 'bicubic')}, crop_pct "
        f"{cfg.get('crop_pct', 0.875)}, mean {cfg.get('mean')}, std {cfg.get('std')}",
        f"- **Weights:** {weights}",
        f"- **License:** {meta['license']}",
        f"- **Converted by:** nas-zoo {__version__}, the conversion verified bit-identical logits against the "
        "official-format load",
        "",
        "## Usage",
        "```python",
        "import nas_zoo  # registers the zoo with timm (pip install nas-zoo)",
        "import timm",
        "",
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        "data_config = timm.data.resolve_model_data_config(model)",
        "transform = timm.data.create_transform(**data_config, is_training=False)",
        "```",
        "",
        "## Results",
        _results_block(entry, measured),
        "",
    ]
    if entry.provenance:
        lines += ["## Provenance"]
        for key in ("repo", "commit", "file", "method"):
            if entry.provenance.get(key):
                lines.append(f"- **{key}:** {entry.provenance[key]}")
        lines.append("")
    return "\n".join(line for line in lines if line is not None)


def _split_front_matter(text: str):
    match = re.match(r"^---\n(.*?)\n---\n?(.*)$", text, flags=re.S)
    if not match:
        return None, text
    return yaml.safe_load(match.group(1)) or {}, match.group(2)


def update_model_card(card: Union[str, os.PathLike], entry: ArchEntry, measured: dict) -> Path:
    """Put our measured numbers into a model card: its model-index metadata and its results table (the rest of
    the card, edits included, is kept)."""
    card = Path(card)
    if not card.is_file():
        raise FileNotFoundError(f"model card not found: {card}")
    meta, body = _split_front_matter(card.read_text(encoding="utf-8"))
    if meta is None:
        raise FolderError(f"{card}: no YAML metadata block ('---' ... '---') at the top of the model card")
    tag = None
    index = meta.get("model-index") or []
    if index and isinstance(index[0], dict) and "." in str(index[0].get("name", "")):
        tag = str(index[0]["name"]).split(".", 1)[1]
    fresh = _card_metadata(entry, tag, measured)
    if "model-index" in fresh:
        meta["model-index"] = fresh["model-index"]
    block = _results_block(entry, measured)
    if RESULTS_BEGIN in body and RESULTS_END in body:
        start, end = body.index(RESULTS_BEGIN), body.index(RESULTS_END) + len(RESULTS_END)
        body = body[:start] + block + body[end:]
    else:
        body = body.rstrip("\n") + "\n\n## Results\n" + block + "\n"
    _write_text(card, "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000).rstrip() + "\n---\n" + body)
    return card


def measured_today(top1: float, top5: float, images: int, input_size) -> dict:
    return {"top1": top1, "top5": top5, "images": images,
            "input_size": "x".join(str(s) for s in input_size[-2:]),
            "date": datetime.date.today().isoformat()}


# ------------------------------------------------------------------------------------------------ checking

def check_model_folder(folder: Union[str, os.PathLike], probe: bool = True) -> dict:
    """Check that a folder is a loadable, publishable model folder; raise one `FolderError` listing every
    problem. Returns facts about it (architecture, entry name, num_classes, files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"{folder}: not a directory")
    problems: List[str] = []
    facts: dict = {"files": {p.name: p.stat().st_size for p in sorted(folder.iterdir())
                             if p.is_file() and not p.name.startswith(".")}}
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            problems.append(f"{name}: missing")

    config = _check_config(folder / CONFIG_FILE, problems) if (folder / CONFIG_FILE).is_file() else None
    if config is not None:
        facts.update(architecture=config["architecture"], num_classes=config.get("num_classes"))
        given = (config.get("model_args") or {}).get(ENTRY_ARG)
        if isinstance(given, dict):
            facts["entry"] = given.get("name")
            facts["hf_hub_id"] = next(iter((given.get("pretrained") or {}).values()), {}).get("hf_hub_id")
    if (folder / CARD_FILE).is_file():
        _check_card(folder / CARD_FILE, problems)
    if config is not None and (folder / HF_WEIGHTS_FILE).is_file() and probe:
        try:
            model = load_model_folder(folder).eval()
            size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
            with torch.no_grad():
                out = model(_probe_input(size, batch=1))
            if not torch.isfinite(out).all():
                problems.append(f"{HF_WEIGHTS_FILE}: the model gives non-finite logits on a probe input")
            elif out.shape[-1] != config.get("num_classes", out.shape[-1]):
                problems.append(f"{CONFIG_FILE}: num_classes {config['num_classes']} but the model gives "
                                f"{out.shape[-1]} logits")
        except (CheckpointError, EntryError) as e:
            problems.append(str(e))
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            problems.append(f"the folder does not load: {type(e).__name__}: {e}")
    if problems:
        raise FolderError(f"{folder} is not a valid model folder:\n" + "\n".join(f"  - {p}" for p in problems))
    return facts


def _check_config(path: Path, problems: List[str]) -> Optional[dict]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        problems.append(f"{CONFIG_FILE}: not valid JSON ({e})")
        return None
    if not isinstance(config, dict):
        problems.append(f"{CONFIG_FILE}: expected a JSON object, got {type(config).__name__}")
        return None
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        problems.append(f"{CONFIG_FILE}: field 'architecture': missing; expected a timm model name such as "
                        f"'{family_architecture('efficientnet')}'")
        return None
    if not isinstance(config.get("pretrained_cfg"), dict):
        problems.append(f"{CONFIG_FILE}: field 'pretrained_cfg': expected a mapping (timm's pretrained cfg)")
        return None
    if not timm.is_model(arch):
        problems.append(f"{CONFIG_FILE}: field 'architecture': unknown model {arch!r}; expected a family "
                        f"architecture ({', '.join(_family_archs())}) with model_args.{ENTRY_ARG}, or a "
                        "registered timm/nas_zoo model name")
        return None
    given = (config.get("model_args") or {}).get(ENTRY_ARG)
    if arch in _family_archs():
        if given is None:
            problems.append(f"{CONFIG_FILE}: field 'model_args.{ENTRY_ARG}': missing; '{arch}' needs the entry "
                            "it builds")
            return None
        try:
            entry = load_entry(given, source=f"{path} model_args.{ENTRY_ARG}")
        except EntryError as e:
            problems.append(str(e))
            return None
        if family_architecture(entry.family) != arch:
            problems.append(f"{CONFIG_FILE}: field 'architecture': {arch!r} but the entry's family is "
                            f"'{entry.family}'; expected '{family_architecture(entry.family)}'")
            return None
    return config


def _family_archs() -> List[str]:
    from .families import family_names
    return [family_architecture(f) for f in family_names()]


def _check_card(path: Path, problems: List[str]) -> None:
    try:
        meta, _ = _split_front_matter(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        problems.append(f"{CARD_FILE}: the YAML metadata block does not parse ({e})")
        return
    if not isinstance(meta, dict):
        problems.append(f"{CARD_FILE}: expected a YAML metadata block ('---' ... '---') at the top")
        return
    if meta.get("library_name") != "timm":
        problems.append(f"{CARD_FILE}: metadata field 'library_name': expected 'timm', got "
                        f"{meta.get('library_name')!r}")
    if not meta.get("license"):
        problems.append(f"{CARD_FILE}: metadata field 'license': missing")
