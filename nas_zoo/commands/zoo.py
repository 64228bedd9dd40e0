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


DATASET_OF_TAG = {"in1k": "ImageNet-1k", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
DATASET_OF_CLASSES = {1000: "ImageNet-1k", 10: "CIFAR-10", 100: "CIFAR-100"}
# a search config's data kinds: (dataset, default image size, default number of classes)
DATA_KINDS = {"embedded": ("embedded demo data", 32, 10), "cifar10": ("CIFAR-10", 32, 10),
              "cifar100": ("CIFAR-100", 32, 100), "imagefolder": ("ImageFolder", 224, None)}


def eval_setting(entry) -> dict:
    """Where an entry is evaluated: dataset, input size and number of classes (None: the model's default).

    A released entry says so in its default pretrained cfg; a searched entry (no pretrained cfg) by the data
    and resolution it was searched on (provenance.data, provenance.cost.image_size); anything else gets timm's
    ImageNet defaults."""
    tag = entry.default_tag
    if tag is not None:
        cfg = entry.pretrained[tag]
        classes = cfg.get("num_classes")
        dataset = DATASET_OF_TAG.get(tag) or DATASET_OF_CLASSES.get(classes) or tag
        return {"dataset": dataset, "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
                "num_classes": classes}
    data = entry.provenance.get("data")
    if isinstance(data, dict) and data.get("kind", "embedded") in DATA_KINDS:
        dataset, size, classes = DATA_KINDS[data.get("kind", "embedded")]
        cost = entry.provenance.get("cost") if isinstance(entry.provenance.get("cost"), dict) else {}
        size = cost.get("image_size") or data.get("image_size") or size
        subset = data.get("classes")
        if dataset == "ImageFolder":
            root = str(data.get("root") or "").rstrip("/").split("/")[-1]
            dataset = "ImageNet-1k" if "imagenet" in root.lower() and subset is None else f"ImageFolder {root}"
        if isinstance(subset, int) and not isinstance(subset, bool):
            dataset, classes = f"{dataset}, {subset} classes", subset
        elif subset is not None:  # a class-list file
            dataset, classes = f"{dataset}, classes of {str(subset).split('/')[-1]}", None
        return {"dataset": dataset, "input_size": (3, int(size), int(size)), "num_classes": classes}
    return {"dataset": "ImageNet-1k", "input_size": (3, 224, 224), "num_classes": None}


def eval_input_size(entry) -> tuple:
    return eval_setting(entry)["input_size"]


def measure(entry) -> dict:
    """Params and conv+linear MACs where the entry is evaluated (its input size and classes), counted on the
    meta device."""
    import torch
    setting = eval_setting(entry)
    kwargs = {"num_classes": setting["num_classes"]} if setting["num_classes"] else {}
    with torch.device("meta"):
        model = timm.create_model(entry.name, **kwargs)
    size = setting["input_size"]
    return {"params": count_params(model), "macs": count_macs(model, size), "input_size": list(size),
            "dataset": setting["dataset"]}


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
