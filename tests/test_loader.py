"""The training data path: global sample order, sharding, repeated augmentation, per-sample seeds,
device normalisation and erasing, resume across world sizes (2 gloo processes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from helpers import write_imagefolder

from mobile_vmoe.data import build_data
from mobile_vmoe.data.device_batch import DeviceNormalize, erasing_boxes
from mobile_vmoe.data.loader import TorchTrainLoader
from mobile_vmoe.data.sampler import ShardedBatchSampler, epoch_order, sample_seed


def _batches(n, B, W, rank, epoch=0, start=0, repeats=1, seed=0):
    s = ShardedBatchSampler(n, B, W, rank, seed=seed, repeats=repeats)
    s.set_epoch(epoch, start)
    return list(s)


def test_order_is_distributed_samplers_and_ranks_take_strided_positions():
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5 + 2)).tolist()  # seed 5, epoch 2
    assert epoch_order(8, 5, 2).tolist() == perm
    r0, r1 = _batches(8, 4, 2, 0, epoch=2, seed=5), _batches(8, 4, 2, 1, epoch=2, seed=5)
    # step 0 = positions 0..3: rank 0 takes 0, 2; rank 1 takes 1, 3; step 1 = positions 4..7
    assert [[i for i, _ in b] for b in r0] == [[perm[0], perm[2]], [perm[4], perm[6]]]
    assert [[i for i, _ in b] for b in r1] == [[perm[1], perm[3]], [perm[5], perm[7]]]
    assert r0[1][1][1] == sample_seed(5, 2, 6)  # the seed belongs to the position, not the rank


def test_every_sample_exactly_once_per_epoch_and_reshuffled():
    n, B = 24, 6
    seen = sorted(i for r in range(3) for b in _batches(n, B, 3, r) for i, _ in b)
    assert seen == list(range(n))
    assert epoch_order(n, 0, 0).tolist() != epoch_order(n, 0, 1).tolist()
    # 26 samples, batch 6: 4 steps, the 2 left over are dropped (drop_last)
    assert ShardedBatchSampler(26, 6, 2, 0).steps_per_epoch == 4


def test_repeated_augmentation_puts_the_repeats_on_different_ranks():
    order = epoch_order(6, 0, 0, repeats=3)
    perm = epoch_order(6, 0, 0).tolist()
    assert order.tolist() == [perm[0]] * 3 + [perm[1]] * 3  # n samples an epoch: 2 images x 3
    ranks = [_batches(6, 3, 3, r, repeats=3) for r in range(3)]
    assert [ranks[r][0][0][0] for r in range(3)] == [perm[0]] * 3  # same image, three ranks
    seeds = {ranks[r][0][0][1] for r in range(3)}
    assert len(seeds) == 3  # ... under three different augmentations


@pytest.mark.parametrize("old, new", [(1, 2), (2, 1)])
def test_resume_position_is_the_same_global_samples_for_any_world_size(old, new):
    n, B, done = 40, 8, 2
    before = {i for r in range(old) for b in _batches(n, B, old, r)[:done] for i, _ in b}
    after = [(i, s) for r in range(new) for b in _batches(n, B, new, r, start=done) for i, s in b]
    full = [(i, s) for b in _batches(n, B, 1, 0) for i, s in b]
    assert sorted(after) == sorted(full[done * B:])  # same samples, same augmentation seeds
    assert before.isdisjoint(i for i, _ in after) and len(before) + len(after) == n


def test_device_normalize_and_erasing_by_hand():
    norm = DeviceNormalize(torch.device("cpu"), (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    x = torch.full((2, 3, 4, 4), 191, dtype=torch.uint8)  # 191 / 255 = 0.749
    y = norm(x)
    expect = [(191 / 255 - 0.5) / s for s in (0.25, 0.5, 1.0)]
    assert y.dtype == torch.float32 and y[0, :, 0, 0].tolist() == pytest.approx(expect, abs=1e-5)
    f = torch.randn(2, 3, 4, 4)
    assert norm(f) is f  # already normalised (in-memory sets) passes through
    torch.manual_seed(0)
    boxes = erasing_boxes(500, 32, 40, prob=0.25)
    top, left, h, w = boxes.T
    on = h > 0
    assert 80 < int(on.sum()) < 170  # about a quarter
    area = (h * w)[on].float() / (32 * 40)
    assert float(area.min()) > 0.01 and float(area.max()) < 0.4  # 2-33 % up to rounding
    assert bool(((top + h) <= 32).all() and ((left + w) <= 40).all() and (h < 32).all() and (w < 40).all())
    torch.manual_seed(1)
    erase = DeviceNormalize(torch.device("cpu"), (0.0,) * 3, (1 / 255,) * 3, erasing=1.0)
    out = erase(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))  # normalised zeros; erased boxes get noise
    changed = (out != 0).any(dim=1).float().mean(dim=(1, 2))  # share of each image erased
    assert bool(((changed > 0.015) & (changed < 0.34)).all())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("loader") / "data", 4, 2, 24, train_per_class=6, val_per_class=2)


def test_batches_are_uint8_and_do_not_depend_on_worker_count(folder):
    b = build_data(str(folder), 16, augment="deit")
    assert b.train_erasing == 0.25
    out = []
    for workers in (0, 2):
        ld = TorchTrainLoader(b.train, global_batch=8, seed=3, workers=workers)
        out.append([(x.clone(), y.clone()) for x, y in ld.epoch(1)])
    assert len(out[0]) == 3 and out[0][0][0].dtype == torch.uint8 and out[0][0][0].shape == (8, 3, 16, 16)
    for (x0, y0), (x1, y1) in zip(*out):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # the loader is built once and serves another epoch (a new order) and a resumed one
    ld = TorchTrainLoader(b.train, global_batch=8, seed=3)
    e2 = [y for _, y in ld.epoch(2)]
    assert [y.tolist() for y in e2[1:]] == [y.tolist() for _, y in ld.epoch(2, start=1)]


# --- 2 gloo processes ---------------------------------------------------------------------------

def _tiny():
    from mobile_vmoe.config import ModelConfig, TrainConfig
    from mobile_vmoe.data.synthetic import build_synthetic

    cfg = ModelConfig(name="tiny", img_size=16, num_classes=4, depth=1, width=16, heads=2, patch_size=4)
    tcfg = TrainConfig(model=cfg, epochs=1, batch_size=16, lr=1e-3, warmup_epochs=0, log_every=1, threads=1)
    return tcfg, build_synthetic(4, 2, 16, train_per_class=16, val_per_class=4, seed=0)  # 4 steps of 16


def _fit(out, world=1, rank=0, resume=False, stop=0):
    from mobile_vmoe.train import fit
    from mobile_vmoe.train.distributed import DistInfo

    tcfg, bundle = _tiny()
    return fit(tcfg.replace(stop_after_steps=stop), bundle, out, dist_info=DistInfo(rank=rank, world_size=world),
               resume=resume, quiet=True)


def _two_ranks(rank, tmp, root):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2)
    try:
        # sharding: rank 0 scans and caches the index, rank 1 reads it; one epoch of global batch 8
        b = build_data(root, 16, augment="light", index_cache=f"{tmp}/index.npz")
        ld = TorchTrainLoader(b.train, global_batch=8, world_size=2, rank=rank, seed=0)
        labels = torch.cat([y for _, y in ld.epoch(0)])
        mine = [i for batch in ld.sampler for i, _ in batch]
        every = [None] * 2
        torch.distributed.all_gather_object(every, (mine, labels.tolist()))
        if rank == 0:
            (tmp / "shards.json").write_text(json.dumps(every))
        _fit(tmp / "one_to_two", 2, rank, resume=True)  # stopped by 1 process, finished by 2
        _fit(tmp / "two_to_one", 2, rank, stop=2)  # stopped by 2 processes (finished by 1 below)
    finally:
        torch.distributed.destroy_process_group()


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "step"]


@pytest.mark.slow
def test_two_gloo_ranks_shard_once_and_resume_across_world_sizes(folder, tmp_path):
    """Every sample once across 2 ranks, the index scanned once; mid-epoch resume 1 -> 2 and 2 -> 1
    (stopped at step 2 of 4, position 32 of the global order), and a refusal in one line."""
    from mobile_vmoe.checkpoint import load_checkpoint, save_checkpoint
    from mobile_vmoe.errors import MvmoeError

    _fit(tmp_path / "one_to_two", stop=2)
    assert load_checkpoint(tmp_path / "one_to_two" / "last.pt")["sample_order"]["position"] == 32
    mp.spawn(_two_ranks, args=(tmp_path, str(folder)), nprocs=2, join=True)
    every = json.loads((tmp_path / "shards.json").read_text())
    assert sorted(every[0][0] + every[1][0]) == list(range(24)) and len(every[0][0]) == 12  # 3 steps, 4 per rank
    b = build_data(str(folder), 16)
    assert sorted(every[0][1] + every[1][1]) == sorted(b.train.labels.tolist())
    assert (tmp_path / "index.npz").is_file()
    out = tmp_path / "two_to_one"
    ck = load_checkpoint(out / "last.pt")
    assert (ck["sample_order"]["world_size"], ck["sample_order"]["position"], ck["epoch_step"]) == (2, 32, 2)
    _fit(out, resume=True)
    for run in ("one_to_two", "two_to_one"):
        assert _steps(tmp_path / run) == [1, 2, 3, 4], run
        assert json.loads((tmp_path / run / "summary.json").read_text())["skipped_images"] == 0
    # a checkpoint without the global position (older versions) cannot change world size
    del ck["sample_order"]
    save_checkpoint(out / "last.pt", ck)
    with pytest.raises(MvmoeError, match="2 process\\(es\\), now 1: its checkpoint has no global sample position"):
        _fit(out, resume=True)


# --- DALI (optional extra: uv sync --extra dali) --------------------------------------------------

def test_loader_choice():
    from mobile_vmoe.data.loader import choose_loader, dali_available

    assert choose_loader("auto", torch.device("cpu")) == "torch" and choose_loader("torch", torch.device("cuda")) == "torch"
    assert choose_loader("auto", torch.device("cuda")) == ("dali" if dali_available() else "torch")


@pytest.mark.slow
def test_dali_cpu_pipeline_matches_the_torch_path(folder):
    pytest.importorskip("nvidia.dali", reason="DALI is an optional extra: uv sync --extra dali")
    from mobile_vmoe.config import TrainConfig
    from mobile_vmoe.data.dali import DaliTrainLoader
    from mobile_vmoe.train.distributed import DistInfo

    b = build_data(str(folder), 16, augment="deit")
    tcfg = TrainConfig(batch_size=8, seed=4, augment="deit")
    torch_ld = TorchTrainLoader(b.train, global_batch=8, world_size=2, rank=1, seed=4)
    dali_ld = DaliTrainLoader(b, tcfg, DistInfo(rank=1, world_size=2), global_batch=8)
    assert dali_ld.steps_per_epoch == torch_ld.steps_per_epoch == 3
    ref = list(torch_ld.epoch(1, start=1))
    got = list(dali_ld.epoch(1, start=1))  # rank 1 of 2, resumed after global step 1
    assert len(got) == len(ref) == 2
    for (x, y), (xr, yr) in zip(got, ref):
        assert x.shape == xr.shape == (4, 3, 16, 16) and x.dtype == xr.dtype == torch.uint8
        assert y.tolist() == yr.tolist()  # same samples in the same order: the labels agree
    # the files are exactly those the sampler gives rank 1 from position 8 on
    files, labels = dali_ld.epoch_files(1, start=1)
    order = epoch_order(24, 4, 1).tolist()
    assert files == [b.train.path(order[p]) for p in (9, 11, 13, 15, 17, 19, 21, 23)]
    assert max(int(x.max()) for x, _ in got) > 0
    # the dense stage trains on a Subset (train less the holdout): its files, in the same order
    sub = torch.utils.data.Subset(b.train, list(range(4, 24)))
    b2 = build_data(str(folder), 16, augment="deit")
    b2.train = sub
    files2, _ = DaliTrainLoader(b2, tcfg, DistInfo(), global_batch=8).epoch_files(0)
    ref2 = TorchTrainLoader(sub, global_batch=8, seed=4)
    ref2.sampler.set_epoch(0)
    assert files2 == [b.train.path(4 + i) for batch in ref2.sampler for i, _ in batch]
