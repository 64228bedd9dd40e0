"""`nas-zoo convert NAME CHECKPOINT --out DIR`: an official checkpoint -> a verified model folder (hub layout).

Converters with their own arguments (``nas-zoo convert densenas --net-config FILE ...``, see
`nas_zoo.commands.convert_densenas`) live in their own modules, exposing ``main(argv)`` or
``add_arguments(parser)`` + ``run(args)``; they are imported only when asked for.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# first word after `convert` -> module of a converter with its own arguments
SPECIAL_CONVERTERS = {
    "densenas": "nas_zoo.commands.convert_densenas",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="official checkpoint -> verified model folder (model.safetensors, config.json, README.md)",
        usage="nas-zoo convert NAME CHECKPOINT --out DIR [--ema | --no-ema] [--tag TAG] [--repo-id ORG/NAME] "
              "[--overwrite]\n       nas-zoo convert densenas --net-config FILE --checkpoint W --name N --out DIR",
        description="Convert an official checkpoint into a Hugging Face model folder in timm's layout. The "
                    "conversion verifies itself: the folder, rebuilt from its config.json alone, must give the "
                    "same logits as the official file loaded directly, or nothing is written. "
                    "`nas-zoo convert NAME -h` lists the options.")
    p.add_argument("name", metavar="NAME", help="a registered model (name or name.tag), an entry YAML file, or "
                                                f"one of {sorted(SPECIAL_CONVERTERS)}")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def model_parser(name: str = "NAME") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"nas-zoo convert {name}",
                                description="Official checkpoint -> verified model folder.")
    p.add_argument("checkpoint", help="the official checkpoint (as released), a state dict or a safetensors file")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="take the EMA copy (--ema) or the plain weights (--no-ema); default: what the official "
                        "evaluation used, as the entry records it")
    p.add_argument("--tag", help="pretrained tag (default: the entry's first, e.g. in1k)")
    p.add_argument("--repo-id", help="where the folder will be published (default: the entry's hf_hub_id); "
                                     "written into the model card and config.json")
    p.add_argument("--overwrite", action="store_true", help="replace the model files of an existing folder")
    return p


def run(args) -> int:
    special = SPECIAL_CONVERTERS.get(args.name)
    if special is not None:
        return _run_special(args.name, special, args.rest)
    opts = model_parser(args.name).parse_args(args.rest)
    from ..hub import ConversionError, convert_checkpoint

    name, tag = args.name, opts.tag
    if not name.endswith((".yaml", ".yml")) and "." in name and not opts.tag:
        name, tag = name.split(".", 1)
    try:
        report = convert_checkpoint(name, opts.checkpoint, opts.out, use_ema=opts.ema, tag=tag,
                                    repo_id=opts.repo_id, overwrite=opts.overwrite)
    except ConversionError as e:
        print(f"nas-zoo convert: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {opts.checkpoint} (weights: {report.weights_key}) -> {report.out_dir}")
    for file, size in report.files.items():
        print(f"  {file:<20} {size / 1e6:10.2f} MB" if size > 1e5 else f"  {file:<20} {size:10d} B")
    print(f"verified: logits of the folder (rebuilt from config.json) == official-format load "
          f"(max |diff| {report.max_abs_diff:.1e} on a probe input {report.probe_shape})")
    print(f"params {report.params / 1e6:.3f} M, MACs {report.macs / 1e6:.1f} M")
    print(f"publish with: nas-zoo push {report.out_dir} --repo-id {report.repo_id}")
    return 0


def _run_special(word: str, module_name: str, rest) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"nas-zoo convert {word}: error: this installation has no '{word}' converter ({module_name} is "
              "missing)", file=sys.stderr)
        return 2
    if hasattr(module, "main"):  # the module parses its own arguments
        return int(module.main(rest) or 0)
    parser = argparse.ArgumentParser(prog=f"nas-zoo convert {word}",
                                     description=getattr(module, "DESCRIPTION", None))
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)
