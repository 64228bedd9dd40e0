"""`nas-zoo list` and `nas-zoo info NAME`."""
from __future__ import annotations

import json

import timm

from ..cost import count_macs, count_params
from ..registry import get_entry, list_entries


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="table of the zoo: name, family, params, MACs, paper top-1, weights")
    p.add_argument("--family", help="only entries of this family")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=run_list)
    p = sub.add_parser("info", help="one entry: the entry itself and our counted params/MACs beside the paper's")
    p.add_argument("name", help="a registered model name (optionally name.tag)")
    p.set_defaults(func=run_info)


def eval_input_size(entry) -> tuple:
    cfg = entry.pretrained.get(entry.default_tag or "", {})
    return tuple(cfg.get("input_size", (3, 224, 224)))


def measure(entry) -> dict:
    """Params and conv+linear MACs at the entry's eval input size, counted on the meta device."""
    import torch
    with torch.device("meta"):
        model = timm.create_model(entry.name)
    size = eval_input_size(entry)
    return {"params": count_params(model), "macs": count_macs(model, size), "input_size": list(size)}


WEIGHT_SOURCES = ("hf_hub_id", "url", "file")


def weight_tags(entry) -> list:
    """The entry's pretrained tags that name where weights come from (architecture-only tags carry preprocessing
    and provenance alone)."""
    return [tag for tag, cfg in entry.pretrained.items() if any(cfg.get(k) for k in WEIGHT_SOURCES)]


def _fmt(value, scale=1e6, digits=2):
    return "-" if value is None else f"{value / scale:.{digits}f}"


def run_list(args) -> int:
    rows = []
    for entry in sorted(list_entries(args.family), key=lambda e: (e.family, e.name)):
        m = measure(entry)
        rows.append({"name": entry.name, "family": entry.family, "params_m": round(m["params"] / 1e6, 3),
                     "macs_m": round(m["macs"] / 1e6, 1), "input": m["input_size"][-1],
                     "paper_top1": entry.paper.get("top1"), "weights": ",".join(weight_tags(entry)) or "-",
                     "tags": list(entry.pretrained)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max([len("name")] + [len(r["name"]) for r in rows])
    header = f"{'name':<{width}} {'family':<16} {'params(M)':>9} {'MACs(M)':>9} {'res':>4} {'top-1':>6}  weights"
    print(header)
    print("-" * len(header))
    for r in rows:
        top1 = "-" if r["paper_top1"] is None else f"{r['paper_top1']:.1f}"
        print(f"{r['name']:<{width}} {r['family']:<16} {r['params_m']:>9.2f} {r['macs_m']:>9.1f} {r['input']:>4} "
              f"{top1:>6}  {r['weights']}")
    print(f"{len(rows)} models; MACs = conv+linear multiply-accumulates at the eval resolution (torch.utils."
          "flop_counter); top-1 as the paper reports it; weights: the tags with a weight source ('-': architecture "
          "only, load your own with pretrained_cfg_overlay=dict(file=...))")
    return 0


def run_info(args) -> int:
    entry = get_entry(args.name)
    m = measure(entry)
    print(entry.to_yaml().rstrip())
    print("---")
    paper = entry.paper
    print(f"{'':<24}{'ours (counted)':>16}{'paper':>12}")
    print(f"{'params (M)':<24}{m['params'] / 1e6:>16.3f}{_fmt_paper(paper.get('params_m')):>12}")
    size = m["input_size"][-1]
    print(f"{'MACs (M) at ' + str(size) + 'px':<24}{m['macs'] / 1e6:>16.2f}{_fmt_paper(paper.get('flops_m')):>12}")
    if paper.get("flops_note"):
        print(f"paper FLOPs: {paper['flops_note']}; ours: conv+linear MACs (torch.utils.flop_counter)")
    return 0


def _fmt_paper(v):
    return "-" if v is None else f"{v:g}"
