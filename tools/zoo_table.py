"""Print the README's zoo table (markdown) from the registry: python tools/zoo_table.py"""
import nas_zoo
from nas_zoo.commands.zoo import measure


def main():
    print("| model | family | params (M) | MACs (M) @ res | paper top-1 / top-5 | paper FLOPs (M) | paper |")
    print("|---|---|---:|---:|---:|---:|---|")
    for e in sorted(nas_zoo.list_entries(), key=lambda e: (e.paper.get("arxiv", "~"), e.name)):
        m = measure(e)
        p = e.paper
        acc = "-" if p.get("top1") is None else f"{p['top1']:.1f} / {p['top5']:.1f}" if p.get("top5") else f"{p['top1']:.1f}"
        flops = "-" if p.get("flops_m") is None else f"{p['flops_m']:g}"
        paper = f"[arXiv:{p['arxiv']}](https://arxiv.org/abs/{p['arxiv']})" if p.get("arxiv") else "-"
        print(f"| `{e.name}` | {e.family} | {m['params'] / 1e6:.2f} | {m['macs'] / 1e6:.1f} @ {m['input_size'][-1]} "
              f"| {acc} | {flops} | {paper} |")


if __name__ == "__main__":
    main()
