"""The Space contract on the MBConv chain space: child == supernet path, one builder for training, pricing, export."""
import numpy as np
import pytest
import timm
import torch

import nas_zoo
from nas_zoo.search.spaces import SpaceError, build_space, space_names
from nas_zoo.search.spaces.mbconv import MBConvChainSpace

OPS = ("MB6_3x3", "MB3_5x5", "MB6_7x7")


def small_space(**kw):
    cfg = dict(stages=[(20, 2, 2), (36, 2, 1)], ops=OPS, stem_size=8, head_blocks=("ds_r1_k3_s1_c12",),
               num_features=64, image_size=32, drop_rate=0.0, drop_path_rate=0.0)
    cfg.update(kw)
    return MBConvChainSpace(**cfg)


def _entry(space, arch, name):
    return {"name": name, "family": space.family, "arch": space.entry_arch(arch), "pretrained": {}}


CREAM_STYLE = dict(model="mobilenetv3", se_layer={"gate_layer": "hard_sigmoid", "act_layer": "relu",
                                                  "rd_round": True},
                   ops=("MB4_3x3_se0.25", "MB6_5x5_se0.25"), tail_blocks=("cn_r1_k1_s1_c40",))


@pytest.mark.parametrize("variant", [{}, CREAM_STYLE], ids=["efficientnet", "mobilenetv3"])
def test_child_inherits_supernet_weights_and_logits(variant):
    space = small_space(**variant)
    torch.manual_seed(0)
    supernet = space.supernet(num_classes=5)
    for p in supernet.parameters():  # BN in eval mode, non-trivial statistics
        p.data.normal_(0, 0.2)
    for m in supernet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    supernet.eval()
    rng = np.random.RandomState(0)
    x = torch.randn(2, 3, 32, 32)
    for i in range(3):
        arch = space.sample(rng)
        name = nas_zoo.register_entry(_entry(space, arch, f"space_test_child_{i}"), replace=True)
        child = timm.create_model(name, num_classes=5).eval()
        child.load_state_dict(space.child_state_dict(supernet.state_dict(), arch))  # strict
        with torch.no_grad():
            assert torch.allclose(child(x), supernet(x, arch), atol=1e-6, rtol=0)
    other = space.mutate(arch, rng, 1.0)
    assert other != arch or len(OPS) == 1
    with torch.no_grad():  # a wrong path gives other logits (the comparison can fail)
        assert not torch.allclose(supernet(x, other), supernet(x, arch), atol=1e-6)


def test_width_not_a_multiple_of_8_trains_prices_and_exports_the_same_network():
    space = small_space()
    arch = [[0, 1], [2]]
    supernet = space.supernet(num_classes=3)
    block = supernet.net.blocks[1][0].ops[0]
    assert block.conv_pwl.out_channels == 24  # timm's round_channels(20), as the entry builds it
    name = nas_zoo.register_entry(_entry(space, arch, "space_test_width"), replace=True)
    child = timm.create_model(name, num_classes=3)
    child.load_state_dict(space.child_state_dict(supernet.state_dict(), arch))
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        meta = timm.create_model(name, num_classes=3).eval()
    with FlopCounterMode(display=False) as fc:
        meta(torch.zeros(1, 3, 32, 32, device="meta"))
    assert space.cost(arch, "macs", num_classes=3) == pytest.approx(fc.get_total_flops() / 2, rel=1e-9)
    assert space.cost(arch, "params", num_classes=3) == sum(p.numel() for p in child.parameters())


def test_cost_range_and_arch_checks():
    space = small_space()
    lo, hi = space.cost_range("macs", num_classes=3)
    costs = [space.cost([[a, b], [c]], "macs", num_classes=3) for a in range(3) for b in range(3) for c in range(3)]
    assert lo == pytest.approx(min(costs)) and hi == pytest.approx(max(costs))
    with pytest.raises(SpaceError, match=r"\[1\]\[0\]"):
        space.check_arch([[0, 1], [7]])
    with pytest.raises(SpaceError, match="expected 2 stages"):
        space.check_arch([[0, 1]])
    assert "mbconv" in space_names()
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        build_space("nope")
