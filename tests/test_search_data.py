"""nas_zoo.search.data: the embedded dataset, ImageFolder and CIFAR from local files, class subsets, the
resumable loader and config errors."""
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from nas_zoo.search import data as D
from nas_zoo.search.data import (DataConfig, DataError, ResumableSampler, build_dataset, create_loader,
                                 make_class_subset)


def embedded(**kw):
    return DataConfig.from_dict({"kind": "embedded", "num_train": 400, "num_val": 100, **kw})


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


# ------------------------------------------------------------------------------------------------------- embedded

def test_embedded_same_seed_same_bits_other_seed_other_images():
    D.generate_shapes.cache_clear()
    first = build_dataset(embedded(seed=3), "train")
    D.generate_shapes.cache_clear()  # regenerate rather than hit the cache
    again = build_dataset(embedded(seed=3), "train")
    assert first.images is not again.images
    assert torch.equal(first.images, again.images) and first.targets == again.targets
    other = build_dataset(embedded(seed=4), "train")
    assert (other.images != first.images).float().mean() > 0.5
    val = build_dataset(embedded(seed=3), "val")
    assert (val.images[:100] != first.images[:100]).float().mean() > 0.5  # val is not a copy of train


def test_embedded_is_balanced_rgb_uint8_with_named_classes():
    ds = build_dataset(embedded(), "train")
    assert ds.images.shape == (400, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.classes == list(D.EMBEDDED_CLASSES)
    assert np.bincount(ds.targets).tolist() == [40] * 10
    image, label = ds[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert label == ds.targets[0]
    assert ds.images.float().std() > 40  # not a blank canvas
    big = build_dataset(embedded(image_size=48, num_train=20), "train")
    assert big.images.shape == (20, 3, 48, 48)


def test_embedded_class_subset_by_count_and_file(tmp_path):
    ds = build_dataset(embedded(classes=4), "train")
    assert ds.num_classes == 4 and len(ds) == 400
    assert set(ds.classes) <= set(D.EMBEDDED_CLASSES) and sorted(set(ds.targets)) == [0, 1, 2, 3]
    listing = tmp_path / "two.txt"
    listing.write_text("ring_striped\n# a comment\n\ncircle_solid\n")
    ds = build_dataset(embedded(classes=str(listing)), "val")
    assert ds.classes == ["ring_striped", "circle_solid"] and len(ds) == 100
    assert sorted(set(ds.targets)) == [0, 1]


@pytest.mark.parametrize("augmentation", [
    {},  # the embedded default: padded crop, flip
    {"train_crop": "rrc", "auto_augment": "rand-m9-mstd0.5", "re_prob": 0.5, "color_jitter": 0.4},  # all RNGs
])
def test_loader_batches_do_not_depend_on_worker_count(augmentation):
    cfg = embedded(num_train=96, **augmentation)
    ds = build_dataset(cfg, "train")
    single = batches(create_loader(ds, cfg, batch_size=16, train=True, workers=0, seed=5, epoch=2))
    multi_loader = create_loader(ds, cfg, batch_size=16, train=True, workers=2, seed=5, epoch=2)
    assert_same_batches(single, batches(multi_loader))
    multi_loader.sampler.set_epoch(2, start_batch=4)  # the persistent workers serve the resumed epoch too
    assert_same_batches(single[4:], batches(multi_loader))
    other_epoch = batches(create_loader(ds, cfg, batch_size=16, train=True, workers=0, seed=5, epoch=3))
    assert not torch.equal(single[0][1], other_epoch[0][1])


def test_augmentation_leaves_the_callers_random_state_alone():
    cfg = embedded(num_train=32)
    loader = create_loader(build_dataset(cfg, "train"), cfg, batch_size=8, train=True)
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_embedded_data_is_learnable_well_above_chance():
    """A small CNN, 300 SGD steps on the raw tensors: far above the 10 % of chance on held-out images."""
    cfg = DataConfig.from_dict({"kind": "embedded", "num_train": 3000, "num_val": 500})
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")

    def tensors(ds):  # the normalisation of the loader, without its augmentation
        mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
        return (ds.images.float() / 255 - mean) / std, torch.tensor(ds.targets)

    (x, y), (xv, yv) = tensors(train), tensors(val)
    torch.manual_seed(0)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    net = nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2),
                        block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    steps, batch = 300, 64
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(y), generator=g) for _ in range(steps * batch // len(y) + 1)])
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(xv).argmax(1) == yv).float().mean().item()
    assert accuracy >= 0.4, f"val accuracy {accuracy:.3f}"


def test_val_fraction_holds_out_part_of_every_class():
    cfg = embedded(num_train=200, val_fraction=0.25)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 150 and len(val) == 50
    assert set(train.indices).isdisjoint(val.indices) and len(set(train.indices) | set(val.indices)) == 200
    assert np.bincount(val.targets).tolist() == [5] * 10
    assert val.indices == build_dataset(cfg, "val").indices
    assert val.indices != build_dataset(embedded(num_train=200, val_fraction=0.25, seed=1), "val").indices
    image, label = val[0]
    assert label == val.dataset.targets[val.indices[0]] and isinstance(image, Image.Image)


# ---------------------------------------------------------------------------------------------------- ImageFolder

def write_tree(root, classes, per_class=3, splits=("train", "val")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{c}_{i}.png")
    return root


def folder_cfg(root, **kw):
    return DataConfig.from_dict({"kind": "imagefolder", "root": str(root), "image_size": 16, **kw})


def test_imagefolder_classes_labels_and_transforms(tmp_path):
    root = write_tree(tmp_path / "imnet", ["n01", "n02", "n03"])
    cfg = folder_cfg(root)
    train = build_dataset(cfg, "train")
    assert train.classes == ["n01", "n02", "n03"] and train.num_classes == 3 and len(train) == 9
    assert sorted(train.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, y = next(iter(create_loader(train, cfg, batch_size=4, train=True)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    xv, yv = next(iter(create_loader(build_dataset(cfg, "val"), cfg, batch_size=9, train=False)))
    assert xv.shape == (9, 3, 16, 16) and yv.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_imagefolder_validation_folder_and_caps(tmp_path):
    root = write_tree(tmp_path / "imnet", ["a", "b"], splits=("train", "validation"))
    cfg = folder_cfg(root, num_train=4)
    assert len(build_dataset(cfg, "val")) == 6  # 'val' falls back to validation/
    capped = build_dataset(cfg, "train")
    assert len(capped) == 4 and capped.num_classes == 2
    assert capped.indices == build_dataset(cfg, "train").indices


def test_imagefolder_subset_by_list_file_and_by_count(tmp_path):
    names = [f"n{i:02d}" for i in range(6)]
    root = write_tree(tmp_path / "imnet", names, per_class=1)
    listing = tmp_path / "subset.txt"
    listing.write_text("n04\nn01\n")
    ds = build_dataset(folder_cfg(root, classes=str(listing)), "val")
    assert ds.classes == ["n04", "n01"]  # labels follow the list
    assert sorted((Path_name(p), t) for p, t in ds.samples) == [("n01_0.png", 1), ("n04_0.png", 0)]
    by_count = build_dataset(folder_cfg(root, classes=3, seed=7), "train")
    assert by_count.classes == make_class_subset(names, 3, seed=7) and len(by_count) == 3


def Path_name(p):
    return p.replace("\\", "/").rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------------------- CIFAR

def write_cifar(root, kind, per_file=4):
    """The torchvision pickle layout with random pixels (so not the official md5 sums)."""
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        folder, files, label_key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels"
        files.append("test_batch")
        meta_name, meta = "batches.meta", {"label_names": [f"class{i}" for i in range(10)]}
        num_classes = 10
    else:
        folder, files, label_key = root / "cifar-100-python", ["train", "test"], "fine_labels"
        meta_name, meta = "meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)],
                                   "coarse_label_names": [f"coarse{i}" for i in range(20)]}
        num_classes = 100
    folder.mkdir(parents=True)
    for number, name in enumerate(files):
        labels = [int(v) for v in rng.integers(0, num_classes, per_file)]
        labels[:2] = [0, 1]
        entry = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8), label_key: labels}
        if number == 0:  # as the official files were written: protocol 2, numpy.core
            raw = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        else:
            raw = pickle.dumps(entry)
        (folder / name).write_bytes(raw)
    with open(folder / meta_name, "wb") as f:
        pickle.dump(meta, f)
    return root


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_from_local_files(tmp_path, kind):
    root = write_cifar(tmp_path, kind)
    with pytest.raises(DataError, match="md5 differs from the official") as err:
        build_dataset(DataConfig.from_dict({"kind": kind, "root": str(root)}), "train")
    assert "verify: false" in str(err.value)

    cfg = DataConfig.from_dict({"kind": kind, "root": str(root), "verify": False})
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    files = 5 if kind == "cifar10" else 1
    assert len(train) == 4 * files and len(test) == 4
    assert train.num_classes == (10 if kind == "cifar10" else 100)
    assert train.classes[1] == ("class1" if kind == "cifar10" else "fine01")
    image, label = train[0]
    assert image.size == (32, 32) and label == 0
    x, y = next(iter(create_loader(train, cfg, batch_size=4, train=True)))
    assert x.shape == (4, 3, 32, 32)

    two = tmp_path / "two.txt"
    two.write_text(f"{train.classes[1]}\n{train.classes[0]}\n")
    sub = build_dataset(DataConfig.from_dict({"kind": kind, "root": str(root), "verify": False,
                                              "classes": str(two)}), "train")
    assert sub.classes == [train.classes[1], train.classes[0]] and sub.num_classes == 2
    assert len(sub) == sum(t in (0, 1) for t in train.targets)
    assert [1 - t for t in sub.targets] == [t for t in train.targets if t in (0, 1)]


class Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar_pickles_may_hold_arrays_only(tmp_path, capsys):
    root = write_cifar(tmp_path, "cifar10")
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": Payload()}, f)
    cfg = DataConfig.from_dict({"kind": "cifar10", "root": str(root), "verify": False})
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR pickle .*refusing to load builtins\.print"):
        build_dataset(cfg, "val")
    assert "must not run" not in capsys.readouterr().out
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, f)
    with pytest.raises(DataError, match=r"test_batch: labels outside \[0, 10\)"):
        build_dataset(cfg, "val")


def test_cifar_missing_file_is_named(tmp_path):
    root = write_cifar(tmp_path, "cifar10")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: CIFAR file not found"):
        build_dataset(DataConfig.from_dict({"kind": "cifar10", "root": str(root), "verify": False}), "train")


# --------------------------------------------------------------------------------------------------- class subsets

def test_class_subset_is_deterministic_nested_and_written(tmp_path):
    names = [f"n{i:08d}" for i in range(1000)]
    a = make_class_subset(names, 100, seed=0, out=tmp_path / "in100.txt")
    assert a == make_class_subset(list(reversed(names)), 100, seed=0)  # listing order does not matter
    assert len(a) == 100 and a == sorted(a) and set(a) <= set(names)
    assert (tmp_path / "in100.txt").read_text().splitlines() == a
    assert set(make_class_subset(names, 50, seed=0)) < set(a)  # ImageNet-50 within ImageNet-100
    assert make_class_subset(names, 100, seed=1) != a
    with pytest.raises(DataError, match=r"number of classes in \[1, 1000\]"):
        make_class_subset(names, 1001, seed=0)


def test_subset_command_line(tmp_path, capsys):
    root = write_tree(tmp_path / "imnet", [f"c{i}" for i in range(5)], per_class=1, splits=("train",))
    out = tmp_path / "lists" / "sub.txt"
    assert D.main(["subset", "--root", str(root), "--num-classes", "3", "--seed", "2", "--out", str(out)]) == 0
    assert out.read_text().splitlines() == make_class_subset([f"c{i}" for i in range(5)], 3, seed=2)
    assert D.main(["subset", "--root", str(tmp_path / "nope"), "--num-classes", "3", "--out", str(out)]) == 2
    assert "nope: dataset directory not found" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- sampling

def test_resumed_loader_yields_the_tail_of_the_fresh_run():
    cfg = embedded(num_train=100)
    ds = build_dataset(cfg, "train")
    fresh = create_loader(ds, cfg, batch_size=8, train=True, seed=1)
    fresh.sampler.set_epoch(4)
    full = batches(fresh)
    assert len(full) == 12  # drop_last for training
    again = create_loader(ds, cfg, batch_size=8, train=True, seed=1, epoch=4)
    assert_same_batches(batches(again), full)
    resumed = create_loader(ds, cfg, batch_size=8, train=True, seed=1)
    resumed.sampler.set_epoch(4, start_batch=5)
    assert len(resumed) == 7
    assert_same_batches(batches(resumed), full[5:])
    resumed.sampler.set_epoch(5)
    assert len(resumed) == 12


def test_sampler_order_matches_distributed_sampler_and_ranks_partition():
    ds = list(range(40))
    for epoch in (0, 3):
        ref = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=9)
        ref.set_epoch(epoch)
        ours = ResumableSampler(ds, batch_size=4, num_replicas=1, rank=0, seed=9, epoch=epoch)
        assert list(ours) == list(ref)
    ranks = [ResumableSampler(ds, batch_size=4, num_replicas=4, rank=r, seed=9) for r in range(4)]
    parts = [list(s) for s in ranks]
    assert sorted(sum(parts, [])) == ds and all(len(p) == 10 for p in parts)
    for r, s in enumerate(ranks):
        s.set_epoch(0, start_batch=1)
        assert list(s) == parts[r][4:]
    uneven = [list(ResumableSampler(list(range(10)), 1, num_replicas=4, rank=r)) for r in range(4)]
    assert sorted(set(sum(uneven, []))) == list(range(10)) and all(len(p) == 3 for p in uneven)


def test_distributed_loader_takes_rank_from_the_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        cfg = embedded(num_train=40)
        loader = create_loader(build_dataset(cfg, "train"), cfg, batch_size=8, train=True, distributed=True, seed=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert loader.sampler.num_replicas == 1 and len(loader) == 5
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("section, message", [
    ({"kind": "embedded", "batch": 64}, r"data\.batch: unknown key"),
    ({"kind": "imagenet"}, r"data\.kind: expected one of embedded, imagefolder, cifar10, cifar100, got 'imagenet'"),
    ({"image_size": "32"}, r"data\.image_size: expected an integer, got '32'"),
    ({"num_train": True}, r"data\.num_train: expected an integer, got True"),
    ({"mean": [0.5, 0.5]}, r"data\.mean: expected 3 numbers"),
    ({"hflip": 2}, r"data\.hflip: expected a number in \[0.0, 1.0\]"),
    ({"classes": 2.5}, r"data\.classes: expected a class-list file or a number of classes"),
    ({"verify": "no"}, r"data\.verify: expected true or false"),
    ({"kind": "cifar10"}, r"data\.root: the dataset directory is required"),
    ({"val_fraction": 1}, r"data\.val_fraction: expected a fraction between 0 and 1"),
    ({"scale": [0.5]}, r"data\.scale: expected 2 numbers"),
])
def test_bad_config_is_one_clear_error(section, message):
    with pytest.raises(DataError, match=message):
        DataConfig.from_dict(section)


def test_config_defaults_per_kind_and_round_trip(tmp_path):
    cfg = DataConfig.from_dict({"kind": "imagefolder", "root": str(tmp_path), "image_size": 160})
    assert (cfg.crop_pct, cfg.train_crop, cfg.mean) == (0.875, "rrc", (0.485, 0.456, 0.406))
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    small = DataConfig(kind="cifar100", root=str(tmp_path), image_size=64)
    assert (small.train_crop, small.crop_padding, small.crop_pct) == ("pad", 8, 1.0)


def test_datasets_pickle_for_spawned_workers(tmp_path):
    root = write_tree(tmp_path / "imnet", ["a", "b"], per_class=1)
    for ds in (build_dataset(folder_cfg(root, classes=1), "train"), build_dataset(embedded(val_fraction=0.5), "val"),
               build_dataset(DataConfig.from_dict({"kind": "cifar10", "root": str(write_cifar(tmp_path, "cifar10")),
                                                   "verify": False}), "train")):
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.classes == ds.classes and len(copy) == len(ds) and copy[0][1] == ds[0][1]


def test_from_dict_names_the_section():
    with pytest.raises(DataError, match=r"^search\.data\.colour: unknown key"):
        DataConfig.from_dict({"colour": 1}, where="search.data")


def test_missing_root_and_split_dirs_are_named(tmp_path):
    with pytest.raises(DataError, match=f"dataset directory {tmp_path / 'nowhere'} not found"):
        build_dataset(folder_cfg(tmp_path / "nowhere"), "train")
    root = write_tree(tmp_path / "imnet", ["a"], per_class=1, splits=("train",))
    with pytest.raises(DataError, match=r"data\.val_split: no folder .*imnet/val"):
        build_dataset(folder_cfg(root), "val")


def test_bad_class_list_entry_is_named(tmp_path):
    root = write_tree(tmp_path / "imnet", ["n01", "n02"], per_class=1)
    listing = tmp_path / "subset.txt"
    listing.write_text("n01\nn0x\n")
    with pytest.raises(DataError, match=r"subset\.txt:2: 'n0x' is not a class of the dataset"):
        build_dataset(folder_cfg(root, classes=str(listing)), "train")
    listing.write_text("n01\nn01\n")
    with pytest.raises(DataError, match=r"subset\.txt:2: 'n01' repeats line 1"):
        build_dataset(folder_cfg(root, classes=str(listing)), "train")
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        build_dataset(folder_cfg(root, classes=str(tmp_path / "missing.txt")), "train")
    with pytest.raises(DataError, match=r"data\.classes: expected a number of classes in \[1, 2\], got 3"):
        build_dataset(folder_cfg(root, classes=3), "train")
