"""From a chosen architecture to a zoo entry: what every method's run ends with.

`write_entry` turns (space, arch) into `RUN_DIR/entry.yaml` (validated by the zoo's own schema, so it is a timm
model once registered) with the provenance every method records, and -- given the supernet's weights -- writes
the child's inherited weights as `RUN_DIR/child.safetensors`, keyed for the entry's model:

    timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='RUN_DIR/child.safetensors'))
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

__all__ = ["write_entry", "json_arch"]


def json_arch(arch: Any) -> Any:
    """`arch` as plain JSON data (numpy ints and tuples become ints and lists)."""
    return json.loads(json.dumps(arch, default=lambda o: o.item() if hasattr(o, "item") else list(o)))


def write_entry(job, space, arch: Any, *, supernet_state: Optional[Mapping[str, Any]] = None,
                provenance: Optional[Dict[str, Any]] = None, description: str = "", name: Optional[str] = None,
                path: Optional[Path] = None) -> Path:
    """Write the entry of `arch` (rank 0; every rank returns its path). Returns the entry file."""
    from nas_zoo.entry import load_entry

    from nas_zoo.io import atomic_write
    cfg, run_dir = job.cfg, Path(job.run_dir)
    name = name or cfg["name"]
    path = Path(path or run_dir / "entry.yaml")
    space.check_arch(arch)
    prov = {"method": job.method.name, "config": str(run_dir / "resolved.yaml"),
            "data": copy.deepcopy(cfg.get("data")), "space": space.name, "arch": json_arch(arch)}
    weights = None
    if supernet_state is not None:
        weights = path.with_name("child.safetensors" if path.name == "entry.yaml" else f"{path.stem}.safetensors")
        prov["weights"] = str(weights)
    prov.update(provenance or {})
    entry = load_entry({"name": name, "family": space.family, "arch": space.entry_arch(arch), "pretrained": {},
                        "description": description or f"Searched by {job.method.name} (nas_zoo.search).",
                        "provenance": prov}, source=str(path))
    if job.ctx.is_main:
        if weights is not None:
            from safetensors.torch import save
            child = {k: v.detach().cpu().contiguous() for k, v in space.child_state_dict(dict(supernet_state),
                                                                                        arch).items()}
            atomic_write(weights, lambda f: f.write(save(child)))
        entry.save(path)
    job.ctx.barrier()
    return path
