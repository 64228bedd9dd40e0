"""DNA: blockwisely supervised NAS with knowledge distillation (Li et al., CVPR 2020), as the official code does it.

1. A teacher from timm (the paper: tf_efficientnet_b7, pretrained), or one trained first on the run's data.
2. Student supernet stages are matched to teacher blocks by their resolution pattern. Stage s learns to map the
   teacher's block t(s-1) output to its block t(s) output (stage 0 starts from the image through the student
   stem): one uniform random path per step, MSE, Adam with a per-stage LR, StepLR x0.9 per epoch, the teacher in
   train() mode. Stages are independent; each is a resumable run of its own.
3. Architecture potentials per stage: every candidate path, BN recalibrated per candidate on one fixed training
   batch (official `BN_Correction`), evaluated on the first validation batches; metrics loss, rela_loss, sq_loss,
   gr_loss, cl_loss, prec1 (=0), in every process count (the official single-process run writes zeros).
4. Selection under a MACs budget with `dna_select.select` (sum of per-stage cl_loss), costs from the run's own
   MACs tables; export as a zoo entry (efficientnet family, timm block strings) plus the supernet weights.

Deliberate differences from the official code (all documented in docs/search.md): the random path is drawn from
one generator shared by all processes (the official code seeds numpy with 42+rank, so N processes train N paths
per step); batch sizes are global; BatchNorm is synchronised when distributed (official: off) so N processes
compute what one does.
"""
from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from ..config import ConfigError, Opt, check_bounds
from . import Method
from ..cost import DISPLAY_UNITS, Budget, check_budget
from ..engine import (DistContext, RunError, RunLogger, TrainLoop, convert_sync_batchnorm, load_checkpoint, progress,
                      save_checkpoint, seed_everything, unwrap, wrap_ddp)
from ..spaces.dna import PRIMITIVES, DNASupernet, dna_space, parse_op
from ..train import ENGINE_SECTION, TRAIN_SECTION

__all__ = ["SCHEMA", "run_dna", "match_stages", "teacher_block_shapes", "potential_metrics", "METRICS",
           "build_teacher"]

METRICS = ("loss", "rela_loss", "sq_loss", "gr_loss", "cl_loss")
OFFICIAL_STAGES = [[24, 2, 2], [40, 2, 4], [80, 2, 4], [112, 1, 4], [192, 2, 4], [320, 1, 1]]
OFFICIAL_LRS = [0.002, 0.005, 0.005, 0.005, 0.005, 0.002]

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 42, low=0),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig)"),
    "teacher": {
        "model": Opt((str, type(None)), None, help="timm model name, e.g. tf_efficientnet_b7"),
        "arch": Opt((dict, type(None)), None, help="or: an efficientnet-family arch mapping (block strings)"),
        "pretrained": Opt(bool, False),
        "checkpoint": Opt((str, type(None)), None, help="teacher weights file (state_dict, torch.save/safetensors)"),
        "stage_blocks": Opt((list, type(None)), None,
                            help="teacher block index per boundary (stem, stage 0..N-1); default: matched by stride"),
        "train": {**TRAIN_SECTION,
                  "epochs": Opt(int, 0, help="train the teacher first on the run's data (0: no)", low=0)},
    },
    "supernet": {
        "stem_size": Opt(int, 32, low=1),
        "stem_block": Opt(str, "ds_r1_k3_s1_c16_se0.25"),
        "stages": Opt(list, OFFICIAL_STAGES, help="[[hidden, stride, layers], ...]"),
        "ops": Opt(list, list(PRIMITIVES)),
    },
    "distill": {
        "epochs": Opt(int, 20, low=1),
        "batch_size": Opt(int, 512, help="global batch (official: 64 per GPU x 8)", low=1),
        "opt": Opt(str, "adam"),
        "lr": Opt(list, OFFICIAL_LRS, help="learning rate per stage"),
        "weight_decay": Opt(float, 1e-4, low=0),
        "opt_eps": Opt(float, 1e-8, above=0),
        "decay_rate": Opt(float, 0.9, help="StepLR factor per epoch", above=0),
        "stages": Opt((list, type(None)), None, help="stage indices to run in this process (None: all)"),
        "clip_grad": Opt((float, type(None)), None, above=0),
    },
    "potential": {
        "batches": Opt(int, 19, help="validation batches per candidate (official: potential_eval_times - 1)", low=1),
        "batch_size": Opt(int, 64, low=1),
        "official_format": Opt(bool, True, help="also write potentials/official/potential-<s>.yaml as the "
                                                "official code does (for process_potential.py)"),
    },
    "search": {
        "budget": Opt(str, help="budget of the found model with its unit: '6 MMACs', '3.4 M params', '12 ms'"),
        "metric": Opt(str, "cl_loss", choices=METRICS),
        "image_size": Opt((int, type(None)), None, help="resolution the MACs are counted at (None: data.image_size)",
                          low=1),
    },
    "export": {
        "stem_size": Opt(int, 32, low=1),
        "num_features": Opt(int, 1280, low=1),
        "drop_rate": Opt(float, 0.2, low=0, high=1),
        "drop_path_rate": Opt(float, 0.2, low=0, high=1),
    },
    "engine": ENGINE_SECTION,
}


# ----------------------------------------------------------------------------------------- config checks
def check_config(cfg: dict, source: str) -> None:
    """Cross-field checks that the schema's types cannot express; one ConfigError each."""
    t = cfg["teacher"]
    if (t["model"] is None) == (t["arch"] is None):
        raise ConfigError(source, "teacher.model", "give exactly one of teacher.model (a timm name) or teacher.arch")
    if t["model"] is not None:
        import timm
        if not timm.is_model(t["model"]):
            raise ConfigError(source, "teacher.model", f"unknown timm model {t['model']!r}")
    if t["checkpoint"] is not None and not Path(t["checkpoint"]).is_file():
        raise ConfigError(source, "teacher.checkpoint", f"file not found: {t['checkpoint']}")
    stages = cfg["supernet"]["stages"]
    for i, st in enumerate(stages):
        if not (isinstance(st, list) and len(st) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                              for v in st)):
            raise ConfigError(source, f"supernet.stages[{i}]", f"expected [hidden, stride, layers] of positive "
                                                              f"integers, got {st!r}")
        if st[1] not in (1, 2):
            raise ConfigError(source, f"supernet.stages[{i}]", f"stride must be 1 or 2, got {st[1]}")
    for i, op in enumerate(cfg["supernet"]["ops"]):
        try:
            parse_op(op)
        except (ValueError, TypeError) as e:
            raise ConfigError(source, f"supernet.ops[{i}]", str(e)) from None
    if len(cfg["distill"]["lr"]) != len(stages):
        raise ConfigError(source, "distill.lr", f"expected one learning rate per stage ({len(stages)}), "
                                                f"got {len(cfg['distill']['lr'])}")
    for i, lr in enumerate(cfg["distill"]["lr"]):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise ConfigError(source, f"distill.lr[{i}]", f"expected a number, got {lr!r}")
        check_bounds(lr, source, f"distill.lr[{i}]", above=0)
    if cfg["distill"]["stages"] is not None:
        for i, s in enumerate(cfg["distill"]["stages"]):
            if not isinstance(s, int) or not 0 <= s < len(stages):
                raise ConfigError(source, f"distill.stages[{i}]", f"expected a stage index in [0, {len(stages) - 1}]")
    check_budget_feasible(cfg, source)


def check_budget_feasible(cfg: dict, source: str) -> None:
    """The budget against the space's cheapest and most expensive architecture, from the cost tables alone
    (meta-device counts, seconds): an infeasible budget fails before any training, and again on resume."""
    from ..data import DataConfig, num_classes_of
    budget = Budget.parse(cfg["search"]["budget"], source, "search.budget")
    if budget.metric == "latency":
        return  # measured on the device at the end of the run; nothing to price beforehand
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    num_classes = num_classes_of(data_cfg)
    lo, hi = dna_space(cfg).cost_range(budget.metric, _image_size(data_cfg, cfg), num_classes)
    check_budget(budget, lo, hi, source)


# ----------------------------------------------------------------------------------------- teacher
def build_teacher(cfg: dict, num_classes: int, for_training: bool = False) -> nn.Module:
    import timm
    t = cfg["teacher"]
    if t["model"] is not None:
        kwargs = {} if for_training else {"drop_rate": 0.0, "drop_path_rate": 0.0}
        try:
            model = timm.create_model(t["model"], pretrained=t["pretrained"] and t["checkpoint"] is None, **kwargs)
        except Exception as e:
            if t["pretrained"]:
                raise RunError(f"teacher.model {t['model']!r}: cannot load pretrained weights ({type(e).__name__}: "
                               f"{e}); set teacher.checkpoint to a local weights file") from None
            raise
    else:
        from timm.models.efficientnet import EfficientNet
        from nas_zoo.entry import Field
        from nas_zoo.families.efficientnet import model_kwargs, validate_arch
        arch = validate_arch(Field("<config>", "teacher.arch", copy.deepcopy(t["arch"])))
        kw = model_kwargs(arch)
        if not for_training:
            kw.update(drop_rate=0.0, drop_path_rate=0.0)
        else:
            kw.update({k: v for k, v in (("drop_rate", t["train"]["drop_rate"]),
                                         ("drop_path_rate", t["train"]["drop_path_rate"])) if v is not None})
        model = EfficientNet(num_classes=num_classes, **kw)
    if t["checkpoint"] is not None:
        state = _read_weights(t["checkpoint"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        body_missing = [k for k in missing if not k.startswith(("classifier", "fc", "head"))]
        if body_missing or unexpected:
            raise RunError(f"teacher.checkpoint {t['checkpoint']}: does not fit the teacher "
                           f"(missing {body_missing[:3]}, unexpected {unexpected[:3]})")
    return model


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    state = load_checkpoint(path)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def _check_teacher_blocks(teacher: nn.Module, name: str) -> None:
    if not all(hasattr(teacher, a) for a in ("conv_stem", "bn1", "blocks")):
        raise ConfigError(name, "teacher.model", "the teacher has no EfficientNet-style blocks (conv_stem, bn1, "
                                                 "blocks): DNA distills block by block; use an EfficientNet / "
                                                 "MobileNet family model (e.g. tf_efficientnet_b7)")


def teacher_forward(teacher: nn.Module, x: torch.Tensor, upto: int) -> List[torch.Tensor]:
    """Outputs of teacher.blocks[0..upto] (the official GenEfficientNet.forward(x, start, end) split)."""
    x = teacher.bn1(teacher.conv_stem(x))
    outs = []
    for block in teacher.blocks[:upto + 1]:
        x = block(x)
        outs.append(x)
    return outs


@torch.no_grad()
def teacher_block_shapes(teacher: nn.Module, image_size: int) -> List[Tuple[int, int]]:
    """(channels, reduction) after each teacher block."""
    was = teacher.training
    teacher.eval()
    dev = next(teacher.parameters()).device
    outs = teacher_forward(teacher, torch.zeros(1, 3, image_size, image_size, device=dev), len(teacher.blocks) - 1)
    teacher.train(was)
    return [(o.shape[1], image_size // o.shape[-1]) for o in outs]


def match_stages(teacher_shapes: Sequence[Tuple[int, int]], student_strides: Sequence[int],
                 explicit: Optional[Sequence[int]], source: str) -> List[int]:
    """Teacher block index for each student boundary: [stem, stage 0, ..., stage N-1].

    The student stem reduces by 2; stage s multiplies by its stride. Default: the 1:1 official pairing when the
    teacher has exactly one block per boundary, else the earliest teacher block of each boundary's reduction.
    """
    reductions = [2]
    for s in student_strides:
        reductions.append(reductions[-1] * s)
    t_red = [r for _, r in teacher_shapes]
    if explicit is not None:
        idx = list(explicit)
        if len(idx) != len(reductions) or not all(isinstance(i, int) and 0 <= i < len(t_red) for i in idx) \
                or any(b <= a for a, b in zip(idx, idx[1:])):
            raise ConfigError(source, "teacher.stage_blocks", f"expected {len(reductions)} increasing teacher block "
                                                              f"indices in [0, {len(t_red) - 1}], got {idx!r}")
        bad = [k for k, i in enumerate(idx) if t_red[i] != reductions[k]]
        if bad:
            k = bad[0]
            raise ConfigError(source, "teacher.stage_blocks", f"boundary {k} needs reduction {reductions[k]}, "
                                                              f"teacher block {idx[k]} has {t_red[idx[k]]}")
        return idx
    if t_red == reductions:
        return list(range(len(reductions)))
    idx, start = [], 0
    for r in reductions:
        found = next((i for i in range(start, len(t_red)) if t_red[i] == r), None)
        if found is None:
            raise ConfigError(source, "teacher", f"teacher without matching blocks: the student's stem and stages "
                                                 f"reduce the image by {reductions}, the teacher's blocks by {t_red}; "
                                                 "no increasing assignment of teacher blocks fits (change "
                                                 "supernet.stages strides, the teacher, or set teacher.stage_blocks)")
        idx.append(found)
        start = found + 1
    return idx


# ----------------------------------------------------------------------------------------- potentials
def recalibrate_bn(forward, module: nn.Module, batch: torch.Tensor) -> None:
    """The official BN_Correction: running statistics from one training batch (momentum 1), then eval mode."""
    from ..evaluate import recalibrate_bn as recalibrate
    recalibrate(module, forward, [batch], cumulative=False)


def potential_metrics(out: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """The official per-batch metrics of a candidate's output against the teacher's block output."""
    diff = out.float() - target.float()
    mse = diff.pow(2).mean()
    var, std = target.float().var(), target.float().std()
    mad = diff.abs().mean()
    return {"loss": float(mse), "rela_loss": float(mse / var), "sq_loss": float(mse.sqrt() / var),
            "gr_loss": float(mad / target.float().abs().mean()), "cl_loss": float(mad / std)}


@torch.no_grad()
def stage_potentials(stage: nn.Module, inputs: List[torch.Tensor], targets: List[torch.Tensor],
                     reset_input: torch.Tensor, num_ops: int, ctx: DistContext, desc: str) -> Dict[str, list]:
    """Every candidate of a stage (itertools.product order): BN recalibrated on the reset batch, then evaluated."""
    layers = len(stage.layers)
    candidates = list(itertools.product(range(num_ops), repeat=layers))
    sums = torch.zeros(len(candidates), len(METRICS), dtype=torch.float64)
    mine = range(ctx.rank, len(candidates), ctx.world_size)
    for i in progress(mine, ctx, desc=desc):
        path = candidates[i]
        recalibrate_bn(lambda x: stage(x, path), stage, reset_input)
        for x, y in zip(inputs, targets):
            m = potential_metrics(stage(x, path), y)
            sums[i] += torch.tensor([m[k] for k in METRICS], dtype=torch.float64)
    sums = ctx.all_reduce_sum(sums) / len(inputs)
    out = {k: sums[:, j].tolist() for j, k in enumerate(METRICS)}
    out["prec1"] = [0] * len(candidates)
    out["top_index"] = [int(i) for i in np.argsort(np.asarray(out["loss"]), kind="stable")]
    return out


def write_potential(potential: Dict[str, list], stage: int, layers: int, ops: Sequence[str], path: Path) -> None:
    """dna_select's format (self-describing: stage, depth, primitives, one line per candidate; atomic write)."""
    from .dna_select import StagePotentials, save_potentials
    cands = np.array(list(itertools.product(range(len(ops)), repeat=layers)), dtype=np.int64).reshape(-1, layers)
    pot = StagePotentials(stage=stage, depth=layers, ops=cands, metrics={k: potential[k] for k in METRICS},
                          primitives=list(ops), source=str(path))
    save_potentials(path, pot)


def write_official_potential(potential: Dict[str, list], path: Path) -> None:
    """The official format (process_potential.py input): keys sorted, block-style lists (yaml.safe_dump)."""
    from nas_zoo.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(dict(potential), default_flow_style=False))


# ----------------------------------------------------------------------------------------- costs / export
def stage_widths(cfg: dict) -> List[int]:
    return [hidden for hidden, _, _ in cfg["supernet"]["stages"]]


def export_arch(cfg: dict, paths: Sequence[Sequence[int]]) -> dict:
    """The efficientnet-family arch of a chosen path (the stages' widths, the family's builder)."""
    return dna_space(cfg).entry_arch([list(p) for p in paths])


def cost_tables(cfg: dict, image_size: int, num_classes: int, metrics: Sequence[str] = ("macs", "params")):
    """Lookup tables (nas_zoo.search.cost) of the entries DNA writes: every op of every searched layer, plus the
    fixed stem and head, measured at `image_size`; MACs and parameters are exact sums."""
    return dna_space(cfg).cost_tables(tuple(metrics), image_size, num_classes)


# ----------------------------------------------------------------------------------------- the run
class _Stage(nn.Module):
    """A supernet stage as a module whose forward takes (x, path): what DDP wraps."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, x, path):
        return self.stage(x, path)


def run_dna(cfg: dict, run_dir: Path, ctx: DistContext, source: str = "<config>",
            logger: Optional[RunLogger] = None) -> Dict[str, Any]:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from ..data import DataConfig, build_dataset, create_loader
    from ..train import train_classifier

    run_dir = Path(run_dir)
    seed = cfg["seed"]
    seed_everything(seed + ctx.rank)
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    train_ds = build_dataset(data_cfg, "train")
    val_ds = build_dataset(data_cfg, "val")
    image_size = _image_size(data_cfg, cfg)
    own_logger = logger is None
    if own_logger:
        logger = RunLogger(run_dir / "log.jsonl", ctx, tensorboard=cfg["engine"]["tensorboard"])

    # 1. teacher: its blocks are matched to the student stages before anything is trained
    teacher_weights = run_dir / "teacher" / "model.pt"
    train_teacher = cfg["teacher"]["train"]["epochs"] > 0
    torch.manual_seed(seed)  # the same teacher initialisation in every process
    teacher = build_teacher(cfg, train_ds.num_classes, for_training=train_teacher)
    _check_teacher_blocks(teacher, source)
    stage_cfgs = cfg["supernet"]["stages"]
    t_shapes = teacher_block_shapes(teacher, image_size)
    idx = match_stages(t_shapes, [s for _, s, _ in stage_cfgs], cfg["teacher"]["stage_blocks"], source)
    chans = [t_shapes[i][0] for i in idx]
    if train_teacher:
        if not teacher_weights.exists():
            metrics = train_classifier(teacher, cfg["teacher"]["train"], cfg["engine"], data_cfg, ctx,
                                       run_dir / "teacher", seed=seed, desc="teacher", key="teacher.train")
            logger.log({"phase": "teacher", **metrics})
        teacher = build_teacher(cfg, train_ds.num_classes)
        teacher.load_state_dict(load_checkpoint(teacher_weights))
    teacher.to(ctx.device)
    for p in teacher.parameters():
        p.requires_grad_(False)

    # 2. supernet (same init in every process: seeded before construction)
    torch.manual_seed(seed)
    supernet = DNASupernet([tuple(s) for s in stage_cfgs], in_chs=chans[:-1], out_chs=chans[1:],
                           ops=cfg["supernet"]["ops"], stem_size=cfg["supernet"]["stem_size"],
                           stem_block=cfg["supernet"]["stem_block"]).to(ctx.device)
    teacher_twin = copy.deepcopy(teacher)  # plain BatchNorm: potentials are per-process computations
    if cfg["engine"]["sync_bn"]:
        teacher = convert_sync_batchnorm(teacher, ctx)
    d = cfg["distill"]
    per_rank = d["batch_size"] // ctx.world_size
    if d["batch_size"] % ctx.world_size:
        raise ConfigError(source, "distill.batch_size", f"{d['batch_size']} is not divisible by {ctx.world_size} "
                                                        "processes")
    stages_todo = d["stages"] if d["stages"] is not None else list(range(len(stage_cfgs)))
    pot_dir = run_dir / "potentials"
    (pot_dir / "official").mkdir(parents=True, exist_ok=True)

    # fixed batches for the potentials: the reset batch = the first training batch, then `batches` val batches
    reset_images = next(iter(create_loader(train_ds, data_cfg, cfg["potential"]["batch_size"], train=True,
                                           seed=seed, epoch=0)))[0].to(ctx.device)
    val_loader = create_loader(val_ds, data_cfg, cfg["potential"]["batch_size"], train=False, seed=seed)
    val_images = [b[0].to(ctx.device) for b in itertools.islice(val_loader, cfg["potential"]["batches"])]

    for s in stages_todo:
        pot_file = pot_dir / f"potential-{s}.yaml"
        stage_ckpt = run_dir / "stages" / f"stage{s}.pt"
        if pot_file.exists():
            supernet.stages[s].load_state_dict(load_checkpoint(run_dir / "stages" / f"stage{s}_weights.pt"))
            continue
        stage = supernet.stages[s]
        module = stage
        twin = copy.deepcopy(stage)
        if cfg["engine"]["sync_bn"]:
            module = convert_sync_batchnorm(stage, ctx)
            supernet.stages[s] = module
        wrapped = wrap_ddp(_Stage(module), ctx, find_unused_parameters=True)
        optimizer = create_optimizer_v2(module, opt=d["opt"], lr=float(d["lr"][s]), weight_decay=d["weight_decay"],
                                        eps=d["opt_eps"])
        scheduler, _ = create_scheduler_v2(optimizer, sched="step", num_epochs=d["epochs"], decay_epochs=1,
                                           decay_rate=d["decay_rate"], warmup_epochs=0)
        path_rng = np.random.RandomState(seed + 1000 * (s + 1))  # identical in every process
        t_in, t_out = idx[s], idx[s + 1]

        def step(batch, s=s, module=module, wrapped=wrapped, path_rng=path_rng, t_in=t_in, t_out=t_out):
            images = batch[0].to(ctx.device)
            path = [int(path_rng.randint(module.num_ops)) for _ in range(len(module.layers))]
            teacher.train()  # official: teacher BN on batch statistics during supernet training
            with torch.no_grad():
                feats = teacher_forward(teacher, images, t_out)
            x = images if s == 0 else feats[t_in]
            return F.mse_loss(wrapped(x, path), feats[t_out])

        def make_loader(epoch: int):
            return create_loader(train_ds, data_cfg, per_rank, train=True, workers=cfg["engine"]["workers"],
                                 distributed=ctx.distributed, seed=seed, epoch=epoch)

        loop = TrainLoop(ctx=ctx, ckpt_path=stage_ckpt, model=module, optimizer=optimizer, epochs=d["epochs"],
                         make_loader=make_loader, step_fn=step, scheduler=scheduler, rng_extra={"path": path_rng},
                         amp=cfg["engine"]["amp"], clip_grad=d["clip_grad"], ckpt_every=cfg["engine"]["ckpt_every"],
                         logger=logger, desc=f"stage {s}")
        loop.run()
        plain = _plain_copy(twin, module)
        if ctx.is_main:
            save_checkpoint(plain.state_dict(), run_dir / "stages" / f"stage{s}_weights.pt")

        # potentials: teacher recalibrated on the reset batch (official BN_Correction), features cached
        teacher_plain = _plain_copy(teacher_twin, teacher)
        recalibrate_bn(lambda x: teacher_forward(teacher_plain, x, t_out), teacher_plain, reset_images)
        with torch.no_grad():
            reset_feats = teacher_forward(teacher_plain, reset_images, t_out)
            feats = [teacher_forward(teacher_plain, x, t_out) for x in val_images]
        inputs = [x if s == 0 else f[t_in] for x, f in zip(val_images, feats)]
        targets = [f[t_out] for f in feats]
        reset_in = reset_images if s == 0 else reset_feats[t_in]
        pot = stage_potentials(plain.eval(), inputs, targets, reset_in, len(plain.layers[0].ops), ctx,
                               desc=f"potential {s}")
        if ctx.is_main:
            if cfg["potential"]["official_format"]:
                write_official_potential(pot, pot_dir / "official" / f"potential-{s}.yaml")
            write_potential(pot, s, len(plain.layers), plain.layers[0].op_names, pot_file)
            best = int(np.argmin(pot[cfg["search"]["metric"]]))
            logger.log({"phase": f"potential {s}", "candidates": len(pot["loss"]),
                        f"best_{cfg['search']['metric']}": pot[cfg["search"]["metric"]][best]})
        supernet.stages[s] = plain
        ctx.barrier()

    missing = [s for s in range(len(stage_cfgs)) if not (pot_dir / f"potential-{s}.yaml").exists()]
    if missing:  # this process ran only some stages (distill.stages); the search waits for the rest
        return {"status": "partial", "missing_stages": missing}

    # 3. search and export (rank 0)
    for s in range(len(stage_cfgs)):
        supernet.stages[s].load_state_dict(load_checkpoint(run_dir / "stages" / f"stage{s}_weights.pt"))
    result = search_and_export(cfg, supernet, run_dir, train_ds.num_classes, image_size, source, ctx)
    logger.log({"phase": "search", **{k: v for k, v in result.items() if not isinstance(v, (list, dict))}})
    if own_logger:
        logger.close()
    return result


def _image_size(data_cfg, cfg) -> int:
    size = getattr(data_cfg, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[-1]
    return int(cfg["search"]["image_size"] or size or 224)


def _plain_copy(twin: nn.Module, trained: nn.Module) -> nn.Module:
    """`twin` (same architecture, plain BatchNorm) with the state of `trained` (possibly synchronised BN / DDP)."""
    out = copy.deepcopy(twin)
    out.load_state_dict(unwrap(trained).state_dict())
    return out


def search_and_export(cfg: dict, supernet: DNASupernet, run_dir: Path, num_classes: int, image_size: int,
                      source: str, ctx: DistContext) -> Dict[str, Any]:
    from . import dna_select
    from nas_zoo.entry import load_entry

    pot_dir = run_dir / "potentials"
    pot_files = [str(pot_dir / f"potential-{s}.yaml") for s in range(len(supernet.stages))]
    stages = dna_select.load_potentials(pot_files)
    budget = Budget.parse(cfg["search"]["budget"], source, "search.budget")
    kind = budget.metric
    metrics = ("macs", "params") + (("latency",) if kind == "latency" else ())
    tables = cost_tables(cfg, image_size, num_classes, metrics)
    if ctx.is_main:
        for name, table in tables.items():
            table.save(pot_dir / f"cost-{name}.json")
    selection = dna_select.select(stages, tables[kind], budget.in_unit(tables[kind].unit),
                                  metric=cfg["search"]["metric"])
    scale, unit = DISPLAY_UNITS[kind]
    paths = [list(map(int, p)) for p in selection.stages]
    arch = export_arch(cfg, paths)
    supernet_file = run_dir / "supernet.pt"
    entry = load_entry({
        "name": cfg["name"], "family": "efficientnet",
        "description": f"Searched by DNA (nas_zoo.search) with teacher "
                       f"{cfg['teacher']['model'] or 'trained from teacher.arch'} under {budget} at {image_size}px.",
        "arch": arch, "pretrained": {},
        "provenance": {
            "method": "dna", "config": str(run_dir / "resolved.yaml"), "data": copy.deepcopy(cfg["data"]),
            "potentials": pot_files, "supernet": str(supernet_file),
            "supernet_op_indices": paths, "ops": list(supernet.ops),
            "cost": {"kind": kind, "image_size": image_size, "budget": str(budget), "unit": unit,
                     "budget_value": budget.value / scale, "value": float(selection.cost) / scale,
                     "macs_m": tables["macs"].price(paths) / 1e6, "params_m": tables["params"].price(paths) / 1e6,
                     "tables": {k: str(pot_dir / f"cost-{k}.json") for k in tables}},
            "score": {"metric": cfg["search"]["metric"], "sum": float(selection.score)},
        }}, source=str(run_dir / "entry.yaml"))
    if ctx.is_main:
        save_checkpoint({"format": "nas_zoo.search/dna-supernet-v1", "state_dict": unwrap(supernet).state_dict(),
                         "stages": [list(s) for s in cfg["supernet"]["stages"]], "ops": list(supernet.ops)},
                        supernet_file)
        entry.save(run_dir / "entry.yaml")
    ctx.barrier()
    return {"status": "done", "entry": str(run_dir / "entry.yaml"), "name": cfg["name"], "paths": paths,
            "score": float(selection.score), "macs": tables["macs"].price(paths) / 1e6,
            "params": tables["params"].price(paths) / 1e6, "block_args": arch["block_args"]}


# ----------------------------------------------------------------------------------------- the method
def run(job) -> Dict[str, Any]:
    result = run_dna(job.cfg, job.run_dir, job.ctx, source=job.source, logger=job.logger)
    if result.get("status") == "done":
        result["summary"] = (f"searched {result['name']}: {result['macs']:.3f} MMACs, {job.cfg['search']['metric']} "
                             f"sum {result['score']:.4f}\n  entry: {result['entry']}")
    return result


def _plot(run_dir):
    from ..plots import plot_dna
    return plot_dna(run_dir)


def _select_command(argv) -> int:
    from . import dna_select
    return dna_select.main(argv)


METHOD = Method(
    name="dna", help="DNA: block-wise distillation search (or `dna select ...`: selection only)",
    description="Run DNA end to end: teacher, supernet distillation per stage, architecture potentials, constrained "
                "selection, export of RUN_DIR/entry.yaml.",
    schema=SCHEMA, check=check_config, run=run, commands={"select": _select_command}, plot=_plot)
