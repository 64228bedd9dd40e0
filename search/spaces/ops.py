"""The MBConv op vocabulary shared by the MBConv spaces: official DNA op names <-> timm block strings."""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["PRIMITIVES", "parse_op", "op_block_string"]

# official order (searching/dna/operations.py PRIMITIVES); op index i in a potential file means PRIMITIVES[i]
PRIMITIVES = ("MB6_3x3_se0.25", "MB6_5x5_se0.25", "MB6_7x7_se0.25", "MB3_3x3_se0.25", "MB3_5x5_se0.25",
              "MB3_7x7_se0.25")
_OP_RE = re.compile(r"^MB(?P<e>\d+)_(?P<k>\d+)x(?P=k)(?:_se(?P<se>\d*\.?\d+))?$")


def parse_op(name: str) -> Tuple[int, int, Optional[float]]:
    """'MB6_5x5_se0.25' -> (expansion 6, kernel 5, se 0.25); the official OPS naming (MB1 = depthwise-separable)."""
    m = _OP_RE.match(name)
    if not m:
        raise ValueError(f"unknown op {name!r}; expected an official DNA op name such as 'MB6_3x3_se0.25' "
                         "(MB<expansion>_<k>x<k>[_se<ratio>])")
    return int(m["e"]), int(m["k"]), (float(m["se"]) if m["se"] else None)


def op_block_string(op: str, stride: int, out_chs: int) -> str:
    """The timm block string of one op: 'MB6_5x5_se0.25', s2, 40 -> 'ir_r1_k5_s2_e6_c40_se0.25'."""
    e, k, se = parse_op(op)
    se_part = f"_se{se:g}" if se else ""
    if e == 1:
        return f"ds_r1_k{k}_s{stride}_c{out_chs}{se_part}"
    return f"ir_r1_k{k}_s{stride}_e{e}_c{out_chs}{se_part}"
