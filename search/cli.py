"""`nas-zoo-search`: run a search, train a model, resume a run.

    nas-zoo-search METHOD --config configs/search/METHOD_demo.yaml [--out RUN_DIR] [key.path=value ...]
    nas-zoo-search METHOD COMMAND ...        (a method's own commands, e.g. `dna select`)
    nas-zoo-search train ENTRY_OR_NAME --config configs/search/train_demo.yaml [--out RUN_DIR] [key=value ...]
    nas-zoo-search resume RUN_DIR
    nas-zoo-search plot RUN_DIR

One subcommand per search method (nas_zoo.search.methods). Every run directory holds resolved.yaml (the full
config after defaults and overrides) and run.json (the command), so `resume` needs nothing else. Multi-GPU /
multi-node: launch the same command with torchrun. Every error a user can cause prints as one line (exit 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from nas_zoo.errors import NasZooError

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  nas-zoo-search dna --config configs/search/dna_demo.yaml --out runs/dna_demo
  nas-zoo-search dna --config configs/search/dna_demo.yaml distill.epochs=1 "search.budget=5 MMACs"
  torchrun --nproc_per_node=8 -m nas_zoo.search.cli dna --config configs/search/dna_imagenet.yaml
  nas-zoo-search dna select runs/dna_demo/potentials/potential-*.yaml --budget "5 MMACs"   # cost-macs.json
  nas-zoo-search train runs/dna_demo/entry.yaml --config configs/search/train_demo.yaml
  nas-zoo-search resume runs/dna_demo
  nas-zoo-search latency-table --space mbv2 --device cpu --out lat.txt   # = densenas latency-table
  nas-zoo-search compare runs/cream_demo --config configs/search/train_demo.yaml   # found vs 3 same-cost random
  nas-zoo-search dsnas --config configs/search/dsnas_demo.yaml --compare configs/search/train_demo.yaml  # both
  nas-zoo-search plot runs/dna_demo                  # search.png (also written at the end of every run)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-zoo-search", description="Neural architecture search on timm models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from .methods import methods
    for method in methods().values():
        extra = "".join(f" `nas-zoo-search {method.name} {c} --help` runs {c} alone." for c in method.commands)
        p = sub.add_parser(method.name, help=method.help, description=(method.description or method.help) + extra)
        p.add_argument("--config", required=True, help=f"YAML config (see configs/search/{method.name}_*.yaml)")
        p.add_argument("--out", help="run directory (default: runs/<name>); an existing one is resumed")
        p.add_argument("--compare", metavar="TRAIN_CONFIG",
                       help="when the search is done, train its entry and its same-cost random baselines with this "
                            "recipe and print found vs random (= `nas-zoo-search compare RUN_DIR --config ...`)")
        for flag, (override, help_) in method.flags.items():
            p.add_argument(flag, dest=_flag_dest(flag), action="store_const", const=override,
                           help=f"{help_} (= {override})")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides (YAML values)")

    p = sub.add_parser("train", help="train an entry (or any timm model) from scratch",
                       description="Train ENTRY_OR_NAME from scratch with timm's optimizer, scheduler, EMA, losses "
                                   "and the data pipeline of the config.")
    p.add_argument("model", metavar="ENTRY_OR_NAME",
                   help="an entry YAML, a run directory holding entry.yaml, or a registered model name")
    p.add_argument("--config", required=True, help="YAML config (see configs/search/train_*.yaml)")
    p.add_argument("--out", help="run directory (default: runs/train-<model>); an existing one is resumed")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides (YAML values)")

    p = sub.add_parser("compare", help="train a search's entry and its same-cost random baselines, same recipe",
                       description="Train RUN_DIR/entry.yaml and every RUN_DIR/baselines/*.yaml (random architectures "
                                   "of the same space at the found one's cost, written by the search) from scratch "
                                   "with the config's recipe; print found vs each random and their mean, write "
                                   "RUN_DIR/compare/compare.json (+ compare.png). Resumable like every run.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--config", required=True, help="training config (see configs/search/train_*.yaml)")
    p.add_argument("--out", help="where the trainings go (default: RUN_DIR/compare)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides (YAML values)")

    p = sub.add_parser("resume", help="continue a run from its last checkpoints",
                       description="Continue the run in RUN_DIR with its recorded command and resolved config.")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = sub.add_parser("plot", help="draw the figure of a finished run (needs matplotlib)",
                       description="Write RUN_DIR/search.png (a DNA search: the exact cost/potential front, the "
                                   "budget, the chosen model, distillation losses) or RUN_DIR/curves.png (a "
                                   "training run: loss and top-1 per epoch). Runs draw these themselves when "
                                   "matplotlib is installed.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    return parser


def _flag_dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-").replace("-", "_")


def _figures(run_dir: Path, ctx) -> None:
    """Draw a finished run's figures (rank 0); a run's results never depend on this, so a failure only warns."""
    if not ctx.is_main:
        return
    from .plots import have_matplotlib, plot_run
    if not have_matplotlib():
        print("  figures: install matplotlib (pip install nas-zoo[plot]) for search.png / curves.png")
        return
    try:
        paths = [plot_run(run_dir)] + ([plot_run(run_dir / "teacher")] if (run_dir / "teacher" / "metrics.json")
                                       .exists() else [])
    except Exception as e:  # noqa: BLE001  (the run is done and saved; say why there is no figure)
        print(f"  figures: not drawn ({type(e).__name__}: {e})", file=sys.stderr)
        return
    print("  figures: " + ", ".join(str(p) for p in paths))


def _write_once(run_dir: Path, resolved: dict, record: dict, ctx) -> None:
    """Record the resolved config and the command; refuse a directory that holds a different run."""
    from nas_zoo.io import atomic_write_text
    from .config import dump_yaml, read_yaml
    target = run_dir / "resolved.yaml"
    ctx.barrier()  # every process looks before rank 0 writes
    existing = read_yaml(target) if target.exists() else None
    ctx.barrier()
    if existing is not None:
        if existing != resolved:
            raise RunDirError(str(run_dir), f"already holds a run with another config; use `nas-zoo-search resume "
                                            f"{run_dir}` to continue it or choose another --out")
        return
    if ctx.is_main:
        atomic_write_text(run_dir / "resolved.yaml", dump_yaml(resolved))
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=1))
    ctx.barrier()


class RunDirError(NasZooError):
    pass


def prepare(schema, config, overrides: List[str] = (), check=None):
    """Load and check a config (a method's or a training recipe): every check that needs no training, before any
    process group starts. Returns (cfg, source)."""
    from .config import load_config
    from .data import DataConfig
    cfg, source = load_config(config, schema, list(overrides))
    if "data" in cfg:
        DataConfig.from_dict(cfg["data"], where="data")  # data errors before anything starts
    if check is not None:
        check(cfg, source)
    return cfg, source


def load_train_config(config, overrides: List[str] = ()):
    from .train import TRAIN_SCHEMA
    return prepare(TRAIN_SCHEMA, config, overrides)


def run_method_command(name: str, config, out: Optional[str], overrides: List[str]) -> dict:
    from .engine import RunLogger, setup_distributed
    from .methods import Job, get_method

    method = get_method(name)
    cfg, source = prepare(method.schema, config, overrides, method.check)
    ctx = setup_distributed(cfg.get("engine", {}).get("device", "auto"))
    _threads(cfg)
    run_dir = Path(out or Path("runs") / cfg["name"])
    _write_once(run_dir, cfg, {"command": name}, ctx)
    logger = RunLogger(run_dir / "log.jsonl", ctx, tensorboard=cfg.get("engine", {}).get("tensorboard", False))
    job = Job(method=method, cfg=cfg, run_dir=run_dir, ctx=ctx, source=source, logger=logger)
    try:
        result = method.run(job)
    finally:
        logger.close()
    if ctx.is_main and result.get("status") == "done":
        print(result.get("summary") or f"{name}: {result.get('name')}\n  entry: {result.get('entry')}")
        _figures(run_dir, ctx)
    return {**result, "run_dir": str(run_dir)}


def run_train_command(model: str, config, out: Optional[str], overrides: List[str]) -> dict:
    from .engine import setup_distributed
    from .train import run_training

    cfg, _ = load_train_config(config, overrides)
    ctx = setup_distributed(cfg["engine"]["device"])
    _threads(cfg)
    default_name = Path(model).parent.name if model.endswith((".yaml", ".yml")) else Path(model).name
    run_dir = Path(out or Path("runs") / f"train-{default_name}")
    _write_once(run_dir, cfg, {"command": "train", "model": str(model)}, ctx)
    result = run_training(model, cfg, run_dir, ctx)
    if ctx.is_main:
        print(f"trained {result['model']}: top-1 {result['val_top1']:.2f}% "
              + (f"(EMA {result['val_ema_top1']:.2f}%) " if "val_ema_top1" in result else "")
              + f"after {cfg['train']['epochs']} epochs; weights {run_dir / 'model.pt'}")
        _figures(run_dir, ctx)
    return result


def compare_command(run_dir: str, config, out: Optional[str], overrides: List[str]) -> dict:
    """Train the found entry and its baselines with one recipe; the honest comparison of a search."""
    from .config import ConfigError
    from .engine import DistContext
    run_dir = Path(run_dir)
    found = run_dir / "entry.yaml"
    baselines = sorted((run_dir / "baselines").glob("*.yaml"))
    if not found.is_file():
        raise ConfigError(str(run_dir), "entry.yaml", "not a finished search (no entry.yaml)")
    if not baselines:
        raise ConfigError(str(run_dir), "baselines", "the search wrote no baseline entries (baselines/*.yaml)")
    out_dir = Path(out or run_dir / "compare")
    import statistics

    import yaml

    from .cost import format_cost
    costs = {}  # the price each baseline was drawn at and the found one's (their provenance), for the table
    for b in baselines:
        info = (yaml.safe_load(b.read_text()).get("provenance") or {}).get("baseline") or {}
        if "cost" in info:
            metric = info.get("metric", "macs")
            costs[str(b)] = format_cost(info["cost"], metric)
            costs.setdefault(str(found), format_cost(info["found_cost"], metric))
    rows = []
    for label, entry in [("found", found)] + [("random", b) for b in baselines]:
        metrics = run_train_command(str(entry), config, str(out_dir / entry.stem if label == "random"
                                                            else out_dir / "found"), list(overrides))
        rows.append({"label": label, "entry": str(entry), "model": metrics["model"], "top1": metrics["val_top1"],
                     "top1_ema": metrics.get("val_ema_top1"), "cost": costs.get(str(entry), "")})
    randoms = [r["top1"] for r in rows if r["label"] == "random"]
    result = {"found": rows[0], "random": rows[1:], "random_mean_top1": statistics.mean(randoms),
              "random_std_top1": statistics.pstdev(randoms)}
    if DistContext().is_main:
        from nas_zoo.io import atomic_write_text
        atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=1))
        print(f"\n{'model':<40}{'cost':>14}{'top-1':>9}")
        for r in rows:
            print(f"{r['model'] + ' (' + r['label'] + ')':<40}{r['cost']:>14}{r['top1']:>8.1f}%")
        print(f"{'random mean (n=' + str(len(randoms)) + ')':<40}{'':>14}{result['random_mean_top1']:>8.1f}% "
              f"(+- {result['random_std_top1']:.1f})")
        from .plots import have_matplotlib, plot_comparison
        if have_matplotlib():
            runs = {f"{r['model']} ({r['label']})": out_dir / (Path(r["entry"]).stem if r["label"] == "random"
                                                                else "found") for r in rows}
            print(f"figure: {plot_comparison(runs, out_dir / 'compare.png', title=str(run_dir))}")
    return result


def resume(run_dir: str) -> dict:
    from .config import ConfigError
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(str(run_dir / "run.json"), "<file>", f"not a run directory ({e})") from None
    resolved = run_dir / "resolved.yaml"
    command = record.get("command")
    if command == "train":
        return run_train_command(record["model"], resolved, str(run_dir), [])
    return run_method_command(str(command), resolved, str(run_dir), [])


def _threads(cfg: dict) -> None:
    import torch
    if cfg["engine"].get("threads"):
        torch.set_num_threads(cfg["engine"]["threads"])


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["latency-table"]:  # DenseNAS' latency lookup tables, also as a top-level command
        argv = ["densenas"] + argv
    if len(argv) >= 2:
        from .methods import methods
        method = methods().get(argv[0])
        if method is not None and argv[1] in method.commands:  # a method's own command, e.g. `dna select`
            return int(method.commands[argv[1]](argv[2:]) or 0)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may follow options: `train M --config F a.b=1`
    bad = [x for x in extra if "=" not in x or x.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .engine import RunError, teardown_distributed

    try:
        if args.command == "train":
            run_train_command(args.model, args.config, args.out, args.overrides)
        elif args.command == "plot":
            from .plots import have_matplotlib, plot_run
            if not have_matplotlib():
                raise RunError("plot needs matplotlib: pip install nas-zoo[plot]")
            try:
                print(plot_run(args.run_dir))
            except FileNotFoundError as e:  # not a finished run: say so in one line
                raise RunError(str(e)) from None
        elif args.command == "resume":
            resume(args.run_dir)
        elif args.command == "compare":
            compare_command(args.run_dir, args.config, args.out, args.overrides)
        else:
            from .methods import get_method
            flags = [getattr(args, _flag_dest(f)) for f in get_method(args.command).flags]
            args.overrides = [o for o in flags if o] + list(args.overrides)  # an explicit key=value wins
            if args.compare:
                load_train_config(args.compare)  # its errors before the search, not after it
            result = run_method_command(args.command, args.config, args.out, args.overrides)
            if args.compare and result.get("status") == "done":
                compare_command(result["run_dir"], args.compare, None, [])
        return 0
    except NasZooError as e:
        print(f"nas-zoo-search {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown_distributed()


if __name__ == "__main__":
    sys.exit(main())
