"""The Method contract: a search method is its step and its phases; the engine owns the loop, the CLI the rest.

Each module of this package that defines ``METHOD = Method(...)`` is a method; the CLI finds them (no central
list; plus the modules named in NAS_ZOO_SEARCH_METHODS), builds `nas-zoo-search <name> --config F [--out DIR]
[key=value ...]` for each, and `resume RUN_DIR` dispatches on the run's own record (`run.json`). A sixth method is one new file here, one config and, if its
space is new, one file in `spaces/`.

    METHOD = Method(
        name="toy", help="one line for --help",
        schema=SCHEMA,        # nas_zoo.search.config schema: defaults, types, choices, bounds
        check=check_config,   # check(cfg, source): everything checkable before training (budget feasibility ...)
        run=run,              # run(job) -> {"status": "done", "entry": path, "name": ..., "summary": "..."}
        commands={},          # extra subcommands: {"select": main(argv) -> int} is `nas-zoo-search dna select`
        plot=None,            # plot(run_dir) -> path of the run's figure (`nas-zoo-search plot`, end of a run)
        flags={},             # shorthand switches: {"--retrain": ("child.retrain=true", "help")} (an override)
    )
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

__all__ = ["Method", "Job", "methods", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    schema: Mapping[str, Any]
    run: Callable[["Job"], Dict[str, Any]]
    check: Optional[Callable[[dict, str], None]] = None
    description: str = ""
    commands: Mapping[str, Callable[[list], int]] = field(default_factory=dict)
    plot: Optional[Callable[[Path], Any]] = None   # plot(run_dir) -> the figure of a finished run (matplotlib)
    flags: Mapping[str, Tuple[str, str]] = field(default_factory=dict)  # --flag -> (override, help)


@dataclass
class Job:
    """What a method's run gets: the checked config, its run directory, the process group, a logger."""

    method: Method
    cfg: dict
    run_dir: Path
    ctx: Any                 # engine.DistContext
    source: str = "<config>"
    logger: Any = None       # engine.RunLogger (run_dir/log.jsonl)

    def ckpt(self, name: str) -> Path:
        """Path of the named checkpoint inside the run directory."""
        return self.run_dir / "ckpt" / f"{name}.pt"


_METHODS: Dict[str, Method] = {}


def methods() -> Dict[str, Method]:
    """Every method of this package, by name (each module defining METHOD; imported on first use)."""
    if not _METHODS:
        names = [f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__)]
        # plugins: modules named in NAS_ZOO_SEARCH_METHODS (comma-separated) that define METHOD
        names += [n.strip() for n in os.environ.get("NAS_ZOO_SEARCH_METHODS", "").split(",") if n.strip()]
        for name in names:
            method = getattr(importlib.import_module(name), "METHOD", None)
            if isinstance(method, Method):
                _METHODS[method.name] = method
    return dict(_METHODS)


def register_method(method: Method) -> Method:
    """Add a method defined outside this package (plugins, tests)."""
    methods()
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    all_methods = methods()
    if name not in all_methods:
        from ..config import ConfigError
        raise ConfigError("run.json", "command", f"unknown method {name!r}; expected one of {sorted(all_methods)}")
    return all_methods[name]
