"""The dsnas / spos configs: shipped files pass the schema and the checks; bad values give one clear error."""
from pathlib import Path

import pytest

from nas_zoo.search.config import ConfigError, load_config
from nas_zoo.search.methods import dsnas, spos

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "search"


@pytest.mark.parametrize("method, name", [(dsnas, "dsnas_demo"), (dsnas, "dsnas_imagenet"), (spos, "spos_demo"),
                                          (spos, "spos_imagenet")])
def test_shipped_configs_are_valid(method, name):
    cfg, source = load_config(CONFIGS / f"{name}.yaml", method.SCHEMA)
    method.check_config(cfg, source)


@pytest.mark.parametrize("override, key, problem", [
    ("search.stop_epoch=0", "search.stop_epoch", "expected 1..search.epochs"),
    ("search.pretrain_epochs=6", "search.pretrain_epochs", "so that alpha is updated"),
    ("search.early_fix_threshold=1.5", "search.early_fix_threshold", "probability gap"),
    ("search.flops_gate=5.0", "search.flops_gate", "would never apply"),
    ("space.stage_out_channels=[32,31,128]", "space.stage_out_channels.1", "even width"),
    ("space.stage_repeats=[2,2]", "space.stage_out_channels", "one width per stage"),
    ("search.arch_betas=[0.5]", "search.arch_betas", "two numbers"),
])
def test_dsnas_bad_values_name_the_key(override, key, problem):
    cfg, source = load_config(CONFIGS / "dsnas_demo.yaml", dsnas.SCHEMA, [override])
    with pytest.raises(ConfigError) as err:
        dsnas.check_config(cfg, source)
    assert err.value.key == key and problem in err.value.problem and source.endswith("dsnas_demo.yaml")


@pytest.mark.parametrize("override, key, problem", [
    ("search.budget=0.1 MMACs", "search.budget", "below the cheapest path"),
    ("search.select=40", "search.select", "parents out of a population"),
    ("data.val_fraction=null", "data.val_fraction", "held-out"),
    ("supernet.bins=[[5.0,6.0]]", "supernet.bins.0", "holds no path"),
    ("search.mutations=20", "search.mutations", "exceed the population"),
    ("space.kind=mbconv", "space.fixed", "takes its own space.options"),  # the demo holds shufflenet layers
])
def test_spos_bad_values_name_the_key(override, key, problem):
    cfg, source = load_config(CONFIGS / "spos_demo.yaml", spos.SCHEMA, [override])
    with pytest.raises(ConfigError) as err:
        spos.check_config(cfg, source)
    assert err.value.key == key and problem in err.value.problem
