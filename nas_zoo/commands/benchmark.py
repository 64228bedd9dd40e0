"""`nas-zoo benchmark NAME...`: inference (and train-step) throughput and peak memory, as a table and CSV."""
from __future__ import annotations

import csv
import sys

import torch

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COLUMNS = ("model", "mode", "batch_size", "img_size", "samples_per_sec", "step_ms", "peak_mem_mb", "params_m",
           "device", "amp", "channels_last", "compiled")


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="throughput and peak memory of zoo (or any timm) models",
                       description="Measure inference (and with --train, train-step) throughput and peak memory, "
                                   "as timm's benchmark.py does: warmup steps, timed steps, device synchronized. "
                                   "Peak memory is the accelerator allocator's high-water mark (not measured "
                                   "on CPU).")
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="zoo or timm model names; 'zoo' for every registered zoo model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=None, help="default: the model's eval resolution")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    p.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--train", action="store_true", help="also measure a train step (forward, backward, SGD)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--csv", help="also write the results to this CSV file")
    p.set_defaults(func=run)


def expand_names(names):
    """'zoo' -> every zoo entry; every other name must be a timm model (zoo entries are), or a `hf-hub:` /
    `local-dir:` source: an unknown one is one KeyError before anything is built."""
    import difflib

    import timm

    from ..registry import list_entries

    out = []
    for name in names:
        if name == "zoo":
            out += sorted(e.name for e in list_entries())
            continue
        if ":" not in name and not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models() + ["zoo"], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown model {name!r}: not a zoo entry or timm model (`nas-zoo list` shows the "
                           f"zoo){hint}")
        out.append(name)
    return out


def run(args) -> int:
    import timm

    from ..benchmark import benchmark

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = AMP_DTYPES[args.amp_dtype] if args.amp else None
    results = []
    for name in expand_names(args.names):
        model = timm.create_model(name)
        size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
        if args.img_size:
            size = (size[0], args.img_size, args.img_size)
        for train in ((False, True) if args.train else (False,)):
            result = benchmark(model, name, size, batch_size=args.batch_size, device=device, amp_dtype=amp_dtype,
                               channels_last=args.channels_last, compile=args.compile, train=train,
                               warmup=args.warmup, iters=args.iters)
            results.append(result.row())
            print(_format_row(results[-1]), file=sys.stderr, flush=True)
        del model
    print(format_table(results))
    if args.csv:
        write_csv(results, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _format_row(r: dict) -> str:
    mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f} MB"
    return (f"{r['model']}: {r['mode']} {r['samples_per_sec']:.1f} img/s, {r['step_ms']:.2f} ms/step "
            f"(batch {r['batch_size']}, {r['img_size']}px), peak {mem}")


def format_table(rows) -> str:
    header = (f"{'model':<22} {'mode':<5} {'batch':>5} {'res':>4} {'img/s':>10} {'ms/step':>9} {'peak MB':>8} "
              f"{'params(M)':>9}  settings")
    lines = [header, "-" * len(header)]
    for r in rows:
        settings = ", ".join(s for s in (r["device"], r["amp"] and f"amp {r['amp']}",
                                         r["channels_last"] and "channels_last", r["compiled"] and "compiled") if s)
        mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"{r['model']:<22} {r['mode']:<5} {r['batch_size']:>5} {r['img_size']:>4} "
                     f"{r['samples_per_sec']:>10.1f} {r['step_ms']:>9.2f} {mem:>8} {r['params_m']:>9.2f}  {settings}")
    return "\n".join(lines)


def write_csv(rows, path) -> None:
    import io

    from ..io import atomic_write_text
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
    atomic_write_text(path, buf.getvalue())
