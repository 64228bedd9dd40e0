"""The search engine: config schema, atomic checkpoints, RNG states, NaN guard, resumable loop."""
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from nas_zoo.search.config import ConfigError, Opt, load_config
from nas_zoo.search.engine import (DistContext, NonFiniteLossError, TrainLoop, get_rng_state, load_checkpoint,
                                   save_checkpoint, set_rng_state)

SCHEMA = {"name": Opt(str), "lr": Opt(float, 0.1), "opt": Opt(str, "sgd", choices=("sgd", "adam")),
          "sub": {"epochs": Opt(int, 3), "stages": Opt((list, type(None)), None)}}


def test_config_defaults_overrides_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nsub: {epochs: 2}\n")
    cfg, _ = load_config(f, SCHEMA, ["lr=0.5", "sub.stages=[0, 2]"])
    assert cfg == {"name": "x", "lr": 0.5, "opt": "sgd", "sub": {"epochs": 2, "stages": [0, 2]}}
    cases = [(["sub.epoch=2"], "sub.epoch", "unknown key"), (["sub.epochs=two"], "sub.epochs", "expected an integer"),
             (["opt=rmsprop"], "opt", "expected one of"), (["lr=true"], "lr", "expected a number")]
    for overrides, key, text in cases:
        with pytest.raises(ConfigError) as e:
            load_config(f, SCHEMA, overrides)
        assert e.value.key == key and text in str(e.value)
    f.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError, match="key 'name': missing"):
        load_config(f, SCHEMA)


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = get_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])  # weights_only=True inside
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 0, "w": torch.zeros(10)}, path)
    script = textwrap.dedent(f"""
        import torch
        from nas_zoo.search.engine import save_checkpoint
        big = torch.randn(4_000_000)
        for step in range(1, 10_000):
            save_checkpoint({{"step": step, "w": big}}, {str(path)!r})
            print(step, flush=True)
    """)
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = load_checkpoint(path)  # whatever the moment, a complete checkpoint
        assert ckpt["w"].numel() in (10, 4_000_000)


def _tiny_loop(tmp_path, make_step, epochs=2, ckpt_every=1):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(5)]
    return TrainLoop(ctx=DistContext(), ckpt_path=tmp_path / "loop.pt", model=model, optimizer=opt, epochs=epochs,
                     make_loader=lambda epoch: data, step_fn=make_step(model), ckpt_every=ckpt_every, desc="tiny")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def make_step(model):
        def step(batch):
            calls["n"] += 1
            loss = nn.functional.mse_loss(model(batch[0]), batch[1])
            return loss * float("nan") if calls["n"] == 4 else loss
        return step

    loop = _tiny_loop(tmp_path, make_step)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 0, batch 3 of phase .train."):
        loop.run()
    ckpt = load_checkpoint(tmp_path / "loop.pt")
    assert ckpt["loop"]["batch_in_phase"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["modules"]["model"].values())


def test_loop_resumes_mid_epoch_to_the_same_weights(tmp_path):
    def make_step(model):
        def step(batch):
            noise = torch.randn(1)  # consumes the global RNG: the restored RNG state must match
            return nn.functional.mse_loss(model(batch[0]) + 0.01 * noise, batch[1])
        return step

    full = _tiny_loop(tmp_path / "a", make_step)
    full.run()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}

    class Stop(Exception):
        pass

    def make_stopping_step(model):
        inner = make_step(model)
        count = {"n": 0}

        def step(batch):
            count["n"] += 1
            if count["n"] == 8:  # dies in epoch 1 after its checkpoint at batch 2
                raise Stop
            return inner(batch)
        return step

    with pytest.raises(Stop):
        _tiny_loop(tmp_path / "b", make_stopping_step).run()
    assert load_checkpoint(tmp_path / "b" / "loop.pt")["loop"]["batch_in_phase"] == 2
    torch.manual_seed(123)  # a fresh process would not share the old RNG state
    resumed = _tiny_loop(tmp_path / "b", make_step)
    resumed.run()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, expected[k]), k
