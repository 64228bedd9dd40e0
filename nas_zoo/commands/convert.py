"""`nas-zoo convert KIND ...`: official files -> zoo entries and weights.

``nas-zoo convert densenas --net-config FILE [--checkpoint weights.pt] --name NAME --out DIR``: see
`nas_zoo.commands.convert_densenas`.
"""
from __future__ import annotations

from . import convert_densenas


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert official files into zoo entries and weights")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    densenas = kinds.add_parser(
        "densenas", help="a DenseNAS net_config (+ weights.pt) -> DIR/NAME.yaml (+ DIR/NAME.safetensors)",
        description=convert_densenas.DESCRIPTION)
    convert_densenas.add_arguments(densenas)
    densenas.set_defaults(func=convert_densenas.run)
