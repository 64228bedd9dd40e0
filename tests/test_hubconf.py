"""torch.hub: hubconf.py lists every registered zoo model, from an installed package and from a plain checkout."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

import nas_zoo

REPO_DIR = Path(__file__).resolve().parents[1]


def load_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_DIR / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dependencies_are_importable_module_names():
    hubconf = load_hubconf()
    for name in hubconf.dependencies:
        assert importlib.util.find_spec(name) is not None, name


def test_one_entrypoint_per_registered_model_with_a_docstring():
    hubconf = load_hubconf()
    names = {e.name for e in nas_zoo.list_entries()}
    public = {n for n in dir(hubconf) if not n.startswith("_") and callable(getattr(hubconf, n))}
    assert names <= public
    doc = hubconf.dna_a.__doc__
    assert "Blockwisely Supervised" in doc and "ImageNet top-1 77.1%" in doc and "params 4.2M" in doc
    assert "Counted: params 4.24M, MACs 335.1M (conv+linear) at 224x224" in doc
    assert "MACs 13.2M (conv+linear) at 64x64" in hubconf.cream_14.__doc__


def test_torch_hub_load_local_without_weights():
    model = torch.hub.load(str(REPO_DIR), "dna_a", source="local", pretrained=False)
    assert type(model).__name__ == "EfficientNet"
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_torch_hub_from_a_plain_checkout(tmp_path):
    """No nas_zoo installed: only the checkout (which torch.hub puts on sys.path) and the dependencies."""
    deps = [p for p in sys.path if p and Path(p).is_dir() and not (Path(p) / "nas_zoo").exists()
            and Path(p).resolve() != REPO_DIR]
    code = (
        "import importlib.util, sys, torch\n"
        "assert importlib.util.find_spec('nas_zoo') is None, 'nas_zoo is installed'\n"
        f"m = torch.hub.load({str(REPO_DIR)!r}, 'cream_14', source='local', pretrained=False, num_classes=7)\n"
        "import nas_zoo\n"
        f"assert nas_zoo.__file__.startswith({str(REPO_DIR)!r}), nas_zoo.__file__\n"
        "print(len(nas_zoo.list_entries()), m(torch.randn(1, 3, 64, 64)).shape[-1])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(deps), OMP_NUM_THREADS="1")
    # -S: no site-packages processing, so no .pth file (editable install) can make nas_zoo importable
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    count, classes = run.stdout.split()
    from nas_zoo.registry import builtin_entry_dir
    assert int(count) == len(list(builtin_entry_dir().glob("*.yaml"))) and int(classes) == 7
