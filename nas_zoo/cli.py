"""`nas-zoo`: the zoo from the command line.

Each sub-command lives in a module of `nas_zoo.commands` with ``add_parser(subparsers)`` that registers it and
sets ``func`` (called with the parsed args, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMAND_MODULES = (
    "nas_zoo.commands.zoo",        # list, info
    "nas_zoo.commands.genotype",   # register-genotype
    "nas_zoo.commands.convert",    # convert
    "nas_zoo.commands.hub",        # push
    "nas_zoo.commands.validate",   # validate
    "nas_zoo.commands.benchmark",  # benchmark
    "nas_zoo.commands.plot",       # plot
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas-zoo", description="Neural-architecture-search results as timm models.",
        epilog="Entries in the directories of NAS_ZOO_ENTRIES (os.pathsep-separated) are registered too.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not part of this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from . import CheckpointError, EntryError, WeightsNotFoundError

    try:
        return int(args.func(args) or 0)
    except (EntryError, CheckpointError, WeightsNotFoundError, KeyError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"nas-zoo {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
