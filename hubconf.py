"""torch.hub entrypoints: one per registered zoo model, generated from the registry.

    model = torch.hub.load('OWNER/nas_zoo', 'dna_a', pretrained=True)             # from GitHub
    model = torch.hub.load('/path/to/checkout', 'dna_a', source='local')          # from a checkout

Each entrypoint is ``timm.create_model(NAME, pretrained=..., **kwargs)``, so weights resolve as documented in
docs/weights.md (explicit file, then the Hugging Face hub and its local cache) and timm's keyword arguments
(num_classes, in_chans, features_only, ...) work. torch.hub puts the checkout on sys.path, so this works whether
or not nas_zoo is installed: a plain checkout reads its entries from configs/models.
"""
dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "yaml"]


class _Entrypoint:
    """One zoo model; its docstring (torch.hub.help) adds our counted params/MACs, measured on first read."""

    def __init__(self, entry):
        self.entry = entry
        self.__name__ = self.__qualname__ = entry.name
        self._doc = None

    def __call__(self, pretrained: bool = False, **kwargs):
        import timm
        return timm.create_model(self.entry.name, pretrained=pretrained, **kwargs)

    @property
    def __doc__(self) -> str:
        if self._doc is None:
            self._doc = _docstring(self.entry)
        return self._doc

    def __repr__(self) -> str:
        return f"<torch.hub entrypoint {self.entry.name}>"


def _docstring(entry) -> str:
    from nas_zoo.commands.zoo import measure

    paper = entry.paper
    lines = [entry.description or f"{entry.name} ({entry.family} family)."]
    if paper.get("title"):
        lines.append(f"Paper: {paper['title']}" + (f" (arXiv:{paper['arxiv']})" if paper.get("arxiv") else ""))
    facts = [f"{label} {paper[key]:g}{unit}" for key, label, unit in
             (("top1", "ImageNet top-1", "%"), ("top5", "top-5", "%"), ("params_m", "params", "M"),
              ("flops_m", "FLOPs", "M")) if paper.get(key) is not None]
    if facts:
        lines.append("Paper numbers: " + ", ".join(facts) + ".")
    cost = measure(entry)
    size = cost["input_size"]
    lines.append(f"Counted: params {cost['params'] / 1e6:.2f}M, MACs {cost['macs'] / 1e6:.1f}M (conv+linear) at "
                 f"{size[1]}x{size[2]}.")
    lines.append(f"pretrained=True resolves weights like timm.create_model('{entry.name}', pretrained=True); "
                 "other keyword arguments go to timm.create_model.")
    return "\n".join(lines)


def _entrypoints() -> dict:
    from nas_zoo.registry import list_entries  # importing nas_zoo registers the zoo
    return {entry.name: _Entrypoint(entry) for entry in list_entries()}


globals().update(_entrypoints())
