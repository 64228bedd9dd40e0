"""Does the zoo cost anything at run time? Our models against the same architecture built by the reference.

For the EfficientNet family the reference is timm's own class (EfficientNet / MobileNetV3) constructed directly
from the entry's raw block strings with timm's builder (`decode_arch_def`), bypassing nas_zoo entirely. Both get
the same weights (their logits are checked equal), then they are timed alternately in several rounds with
`nas_zoo.benchmark.benchmark` (timm benchmark.py method: warmup, timed iterations, device synchronized); the
table shows the median throughputs and the median of the per-round ratios ours/reference (>= 1.0 within
noise: no overhead).

With --compile every model is also torch.compile'd (default inductor backend) and checked against eager, so this
script is the "torch.compile works on every zoo model" check.

    python benchmarks/zoo_overhead.py                      # every zoo model, eager, CPU threads as set
    python benchmarks/zoo_overhead.py --compile --csv overhead.csv
    python benchmarks/zoo_overhead.py dna_a cream_14 --device cuda --amp --channels-last

Families without a reference builder here (REFERENCE_BUILDERS) are compile-checked and timed alone.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from functools import partial

import timm
import torch
import torch.nn as nn

import nas_zoo
from nas_zoo.benchmark import benchmark, prepare_model


def efficientnet_reference(entry) -> nn.Module:
    """timm's class from raw arch strings, as one would write it by hand with timm's builder."""
    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    arch = entry.arch
    kwargs = dict(block_args=decode_arch_def(arch["block_args"], arch.get("depth_multiplier", 1.0)),
                  stem_size=arch["stem_size"], num_features=arch["num_features"],
                  act_layer=get_act_layer(arch["act_layer"]),
                  norm_layer=partial(nn.BatchNorm2d, eps=arch.get("bn_eps", 1e-5)),
                  round_chs_fn=partial(round_channels, multiplier=arch.get("channel_multiplier", 1.0)),
                  pad_type=arch.get("pad_type", ""), fix_stem=arch.get("fix_stem", False),
                  # the entry's training regularisation too, so both models hold exactly the same modules
                  drop_rate=arch.get("drop_rate", 0.0), drop_path_rate=arch.get("drop_path_rate", 0.0))
    se = arch.get("se_layer")
    if se:
        kwargs["se_layer"] = partial(SqueezeExcite, gate_layer=se.get("gate_layer", "sigmoid"),
                                     force_act_layer=get_act_layer(se["act_layer"]) if se.get("act_layer") else None,
                                     rd_round_fn=round_channels if se.get("rd_round") else None)
    if arch["model"] == "mobilenetv3":
        return MobileNetV3(se_from_exp=arch.get("se_from_exp", True), head_bias=arch.get("head_bias", True),
                           **kwargs)
    return EfficientNet(**kwargs)


# family -> entry -> the same architecture built without nas_zoo (other families add theirs)
REFERENCE_BUILDERS = {"efficientnet": efficientnet_reference}


def _num(value: float, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value != value else format(value, spec)  # NaN: no reference


def _iterations(model, size, args, amp) -> int:
    once = benchmark(model, "calibrate", size, batch_size=args.batch_size, device=args.device, amp_dtype=amp,
                     channels_last=args.channels_last, warmup=1, iters=2)
    return max(args.iters, int(args.min_seconds * 1000 / once.step_ms))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="zoo models (default: all registered)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=None, help="default: each model's eval resolution")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per round (at least)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="raise the iterations of fast models so each timed loop lasts about this long")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both (and check against eager)")
    p.add_argument("--csv", help="write the table as CSV")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    names = args.names or sorted(e.name for e in nas_zoo.list_entries())
    amp = torch.bfloat16 if args.amp else None
    rows = []
    print(f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.iters} iters" + (", compiled" if args.compile else ""), flush=True)
    header = (f"{'model':<18} {'res':>4} {'iters':>5} {'ours img/s':>11} {'ref img/s':>10} {'ratio':>6} "
              f"{'max|diff|':>10}  note")
    print(header)
    print("-" * len(header), flush=True)
    for name in names:
        entry = nas_zoo.get_entry(name)
        ours = timm.create_model(name).eval()
        size = tuple(ours.pretrained_cfg["input_size"])
        if args.img_size:
            size = (size[0], args.img_size, args.img_size)
        builder = REFERENCE_BUILDERS.get(entry.family)
        ref = None
        if builder is not None:
            ref = builder(entry).eval()
            ref.load_state_dict(ours.state_dict())
            if str(ref) != str(ours):
                print(f"{name}: the reference holds different modules", file=sys.stderr)
                return 1
        x = torch.randn(2, *size)
        with torch.no_grad():
            eager = ours(x)
            diff = (ref(x) - eager).abs().max().item() if ref is not None else float("nan")
        note = ""
        models = {"ours": prepare_model(ours, args.device, args.channels_last, args.compile)}
        if ref is not None:
            models["ref"] = prepare_model(ref, args.device, args.channels_last, args.compile)
        if args.compile:  # compile happens on the first call: check it against eager
            with torch.no_grad():
                compiled = models["ours"](x.to(args.device))
            # random-init logits are tiny (~1e-5): compare relative to their scale
            compile_diff = ((compiled.float().cpu() - eager).abs().max() / eager.abs().max()).item()
            note = f"compiled vs eager: max rel diff {compile_diff:.1e}"
            if compile_diff > 1e-4:
                note += " MISMATCH"
        iters = _iterations(models["ours"], size, args, amp)
        speed = {k: [] for k in models}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))  # alternate to cancel drift
            for key in order:
                res = benchmark(models[key], name, size, batch_size=args.batch_size, device=args.device,
                                amp_dtype=amp, channels_last=args.channels_last, warmup=args.warmup,
                                iters=iters)
                speed[key].append(res.samples_per_sec)
        ours_speed = statistics.median(speed["ours"])
        ref_speed = statistics.median(speed["ref"]) if ref is not None else float("nan")
        # each round's two runs are adjacent in time: the median of the per-round ratios cancels slow drift
        ratio = (statistics.median(o / r for o, r in zip(speed["ours"], speed["ref"])) if ref is not None
                 else float("nan"))
        if ref is None:
            note = (note + "; " if note else "") + f"no reference builder for family '{entry.family}'"
        rows.append(dict(model=name, img_size=size[-1], ours_img_s=round(ours_speed, 2),
                         ref_img_s=round(ref_speed, 2), ratio=round(ratio, 4), max_abs_diff=diff, note=note))
        print(f"{name:<18} {size[-1]:>4} {iters:>5} {ours_speed:>11.1f} {_num(ref_speed, '10.1f')} "
              f"{_num(ratio, '6.3f')} {_num(diff, '10.1e')}  {note}", flush=True)
    ratios = [r["ratio"] for r in rows if r["ratio"] == r["ratio"]]
    if ratios:
        print(f"ratio ours/reference: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
              f"max {max(ratios):.3f} over {len(ratios)} models")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    bad = [r["model"] for r in rows if "MISMATCH" in r["note"] or (r["max_abs_diff"] == r["max_abs_diff"]
                                                                   and r["max_abs_diff"] > 0)]
    if bad:
        print(f"output differs for: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
