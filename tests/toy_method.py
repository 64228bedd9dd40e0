"""A sixth method in a few lines: uniform single-path sampling on the MBConv chain space, the best of a few random
paths on held-out data. Loaded by the CLI through NAS_ZOO_SEARCH_METHODS=toy_method (the contract's proof)."""
import os

import numpy as np
import torch
import torch.nn.functional as F

from nas_zoo.search.baseline import write_baselines
from nas_zoo.search.config import Opt
from nas_zoo.search.data import DataConfig, build_dataset, create_loader
from nas_zoo.search.engine import Loop, Phase
from nas_zoo.search.evaluate import evaluate, recalibrate_bn
from nas_zoo.search.export import write_entry
from nas_zoo.search.methods import Method
from nas_zoo.search.spaces.mbconv import MBConvChainSpace
from nas_zoo.search.train import ENGINE_SECTION

SCHEMA = {"name": Opt(str), "seed": Opt(int, 0), "data": Opt(dict), "epochs": Opt(int, 2),
          "batch_size": Opt(int, 32), "lr": Opt(float, 0.05), "candidates": Opt(int, 4),
          "stages": Opt(list, [[16, 2, 2], [24, 2, 1]]), "ops": Opt(list, ["MB3_3x3", "MB6_5x5"]),
          "engine": ENGINE_SECTION}


def run(job):
    cfg, ctx = job.cfg, job.ctx
    data = DataConfig.from_dict(cfg["data"])
    train, val = build_dataset(data, "train"), build_dataset(data, "val")
    space = MBConvChainSpace(stages=cfg["stages"], ops=cfg["ops"], stem_size=8, head_blocks=("ds_r1_k3_s1_c8",),
                             num_features=64, image_size=data.image_size, drop_rate=0.0, drop_path_rate=0.0)
    torch.manual_seed(cfg["seed"])
    net = space.supernet(train.num_classes)
    rng = np.random.RandomState(cfg["seed"] + ctx.rank)
    die = int(os.environ.get("TOY_DIE_AT", "0"))

    def step(batch):
        if die and loop.global_step + 1 == die:
            os._exit(9)  # as under kill -9: no cleanup
        return F.cross_entropy(net(batch[0], space.sample(rng)), batch[1])

    loop = Loop(ctx=ctx, ckpt_path=job.ckpt("supernet"), epochs=cfg["epochs"], modules={"supernet": net},
                optimizers={"w": torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=0.9)},
                phases=[Phase("train", lambda e: create_loader(train, data, cfg["batch_size"], True, seed=0, epoch=e),
                              step, optimizer="w")], rngs={"path": rng}, ckpt_every=2, logger=job.logger, desc="toy")
    loop.run()
    pick = np.random.RandomState(cfg["seed"])
    calib = [b[0] for b, _ in zip(create_loader(train, data, cfg["batch_size"], True, seed=1), range(2))]
    scored = []
    for arch in (space.sample(pick) for _ in range(cfg["candidates"])):
        recalibrate_bn(net, lambda x: net(x, arch), calib)
        scored.append((evaluate(lambda x: net(x, arch), create_loader(val, data, 64, False), ctx)["top1"], arch))
    top1, best = max(scored, key=lambda t: t[0])
    entry = write_entry(job, space, best, supernet_state=net.state_dict(), provenance={"score": top1})
    write_baselines(job, space, best, n=2, metric="macs", num_classes=train.num_classes)  # for `compare`
    return {"status": "done", "name": cfg["name"], "entry": str(entry), "arch": best,
            "summary": f"toy: {cfg['name']} {best} held-out top-1 {top1:.1f}%\n  entry: {entry}"}


METHOD = Method(name="toy", help="uniform single-path sampling, best random path", schema=SCHEMA, run=run)
