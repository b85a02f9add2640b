"""One training stage: a TrainConfig and a dataset -> a run directory.

``fit`` trains one model (the dense baseline or the MoE) and writes, on rank 0::

    DIR/last.pt        everything needed to resume (TrainState.state_dict(): weights, EMA, optimizer,
                       scheduler, RNG, position)
    DIR/model.pt       the final model (EMA weights under "ema" when EMA is on), no optimizer
    DIR/metrics.jsonl  {"kind": "step" | "epoch" | "eval", "epoch", "step", ...} per line
    DIR/summary.json   see ``make_summary`` and docs/formats.md

The pieces, as in timm's train.py: ``TrainState`` (what changes), ``Stage`` (what does not),
``train_step`` / ``train_one_epoch`` / ``evaluate`` (plain functions) and ``fit`` (the epoch loop).

Determinism (what makes resume == uninterrupted on CPU): the data order of epoch e is one global
order (mobile_vmoe.data.sampler: a permutation from seed + e, sharded over ranks) and every sample's
augmentation has its own seed; the global RNG (MixUp, drop path, router noise, erasing) is reseeded
at each epoch start from (seed, epoch, rank); a mid-epoch stop saves the RNG states of every rank
and how many global steps of the epoch were done, and resume starts the order there (with any
world size that divides the batch; other ranks' RNG streams are then reseeded).
"""

from __future__ import annotations

import contextlib
import os
import functools
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig
from ..data import MixupCutmix, superclass_targets
from ..data.loader import (
    build_train_loader,
    check_sample_order,
    ignore_stop_signals,
    restore_skipped,
    sample_order,
    skipped_files,
    skipped_images,
)
from ..errors import MvmoeError
from ..fileio import atomic_write_json, file_sha256, read_json_object
from ..models import MobileVMoE
from ..models.flops import profile_flops
from ..models.weights import load_pretrained, save_pretrained
from ..provenance import git_state
from .distill import load_teacher
from .distributed import DistInfo, all_reduce_mean, all_reduce_sum, barrier, broadcast_flag, shard
from .ema import build_ema, ema_state, load_ema_state
from .evaluate import evaluate
from .losses import Distill, LossParts, mvmoe_loss
from .metrics import MetricsLog, Progress
from .optim import build_optimizer, build_scheduler
from .state import capture_rng, epoch_seed, restore_rng, seed_everything


# ----------------------------------------------------------------------------------- state
@dataclass
class TrainState:
    """Everything that changes while a stage trains; ``state_dict`` is what last.pt resumes from."""

    model: MobileVMoE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: torch.optim.swa_utils.AveragedModel | None = None
    # fp16: loss scaling; a disabled GradScaler (a pass-through) otherwise
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    epoch: int = 0  # finished epochs
    step: int = 0  # optimizer steps so far
    micro: int = 0  # micro-batches of the optimizer step in progress (grad_accum); 0 between steps
    epoch_step: int = 0  # batches of the current epoch already done (after a mid-epoch stop)
    seconds: float = 0.0  # training time so far, all invocations
    images_seen: int = 0
    metrics: dict = field(default_factory=dict)  # the last evaluation
    rng_per_rank: list | None = None  # RNG state of every rank at a mid-epoch stop

    @property
    def eval_model(self) -> MobileVMoE:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        ema, n = ema_state(self.ema) if self.ema is not None else (None, 0)
        return {"model": self.model.state_dict(), "ema": ema, "ema_n_averaged": n,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
                "train_seconds": self.seconds, "images_seen": self.images_seen, "metrics": self.metrics,
                "rng_per_rank": self.rng_per_rank,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        if self.ema is not None and d.get("ema") is not None:
            load_ema_state(self.ema, d["ema"], d.get("ema_n_averaged", 0))
        self.optimizer.load_state_dict(d["optimizer"])
        self.scheduler.load_state_dict(d["scheduler"])
        self.epoch, self.step, self.epoch_step = d["epoch"], d["step"], d.get("epoch_step", 0)
        self.seconds, self.images_seen = d.get("train_seconds", 0.0), d.get("images_seen", 0)
        self.metrics = d.get("metrics") or {}
        self.rng_per_rank = d.get("rng_per_rank")
        if d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])


def build_state(stage: "Stage", init: str | os.PathLike | None = None) -> TrainState:
    """A fresh model (seeded; its weights loaded from ``init`` when given: pretrained or upcycled,
    ``models.weights.load_pretrained``), its EMA, AdamW and the warmup + cosine schedule."""
    tcfg = stage.tcfg
    seed_everything(tcfg.seed)
    model = MobileVMoE(tcfg.model)
    if init is not None:
        load_pretrained(model, init, say=stage.say)
    model = model.to(stage.device)
    lr = tcfg.effective_lr  # lr per 512 images, scaled to the global batch
    optimizer = build_optimizer(model, lr, tcfg.weight_decay, (tcfg.betas1, tcfg.betas2))
    total = stage.steps_per_epoch * tcfg.epochs
    scheduler = build_scheduler(optimizer, total, round(tcfg.warmup_epochs * stage.steps_per_epoch),
                                tcfg.min_lr / lr)
    scaler = torch.amp.GradScaler(stage.device.type, enabled=stage.amp_dtype == torch.float16)
    return TrainState(model, optimizer, scheduler, build_ema(model, tcfg.ema_decay), scaler)


# ----------------------------------------------------------------------------------- stage
@dataclass
class Stage:
    """What stays fixed while one stage trains: settings, data, where it writes, which process."""

    tcfg: TrainConfig
    bundle: object  # mobile_vmoe.data.DataBundle
    out: Path
    name: str = "train"  # "dense" | "moe": shown in logs
    info: DistInfo = field(default_factory=DistInfo)
    superclasses: dict | None = None  # router targets of a per-image MoE (a superclasses.json dict)
    quiet: bool = False

    def __post_init__(self) -> None:
        cfg, info = self.tcfg.model, self.info
        if not cfg.is_per_image:
            self.superclasses = None  # dense and per-token models have no router target
        if self.superclasses is not None and self.superclasses["num_superclasses"] != cfg.num_experts:
            raise MvmoeError(f"{self.superclasses['num_superclasses']} superclasses for {cfg.num_experts} experts: "
                             "the router learns superclass i as expert i, so they must be equal")
        if self.tcfg.batch_size % info.world_size:
            raise MvmoeError(f"batch_size={self.tcfg.batch_size} is not divisible by the {info.world_size} processes")
        self.local_batch = self.tcfg.batch_size // info.world_size
        self.loader = build_train_loader(self.bundle, self.tcfg, info)  # built once; global sample order
        # the loader counts micro-batches (global batch_size each); an optimizer step is grad_accum of them
        self.steps_per_epoch = self.loader.steps_per_epoch // self.tcfg.grad_accum
        if self.steps_per_epoch == 0:
            raise MvmoeError(f"{len(self.bundle.train)} training images are fewer than one optimizer step of "
                             f"{self.tcfg.global_batch}: lower batch_size or grad_accum with --set")
        self.c2s = (torch.tensor(self.superclasses["class_to_superclass"], dtype=torch.long, device=self.device)
                    if self.superclasses else None)  # (N,) class -> superclass
        self.amp_dtype = amp_dtype_for(self.tcfg.amp, self.device)
        self.mixer = None
        if self.tcfg.mixup > 0 or self.tcfg.cutmix > 0:
            self.mixer = MixupCutmix(cfg.num_classes, self.tcfg.mixup, self.tcfg.cutmix, self.tcfg.mix_prob)
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=info.is_main)
        self.teacher, self.teacher_info = None, None
        if self.tcfg.teacher:
            self.teacher, self.teacher_info = load_teacher(self.tcfg.teacher, self.bundle, self.device)

    @property
    def device(self) -> torch.device:
        return self.info.device

    def say(self, text: str) -> None:
        if self.info.is_main and not self.quiet:
            print(text)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_loader(self, epoch: int, skip_batches: int):
        """Epoch ``epoch``'s batches of this rank, the first ``skip_batches`` global steps left out (resume)."""
        return self.loader.epoch(epoch, skip_batches)

    def val_loader(self) -> DataLoader:
        """This rank's shard of the evaluation split (``distributed.shard``), with the workers."""
        return DataLoader(shard(self.bundle.val, self.info), batch_size=max(self.local_batch, 64), shuffle=False,
                          num_workers=self.tcfg.workers, pin_memory=self.device.type == "cuda",
                          worker_init_fn=ignore_stop_signals)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). auto: bf16 on a CUDA GPU that computes in bf16 (Ampere
    and newer), fp16 (with GradScaler) on older CUDA GPUs, fp32 on CPU; bf16 / fp16 as asked."""
    if amp == "none":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


class RoutingForward(nn.Module):
    """Makes ``forward_with_routing`` the ``forward`` that DDP wraps (DDP only hooks forward).

    Returns a tuple (logits, router_logits or None, aux_loss or None) so DDP sees plain tensors.
    """

    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model.forward_with_routing(x)
        return out.logits, out.router_logits, out.aux_loss


class StopRequest:
    """SIGTERM / Ctrl-C set a flag; the loop finishes its step, saves last.pt and returns.

    A repeated signal is expected and ignored: under SLURM every process gets SIGTERM and torchrun's
    agent then forwards its own copy to the ranks (Ctrl-C under torchrun: the same with SIGINT). Only
    a second Ctrl-C at least ``GIVE_UP_AFTER_S`` after the first gives up at once (KeyboardInterrupt)."""

    GIVE_UP_AFTER_S = 2.0

    def __init__(self):
        self.flag = False
        self.signum: int | None = None  # the signal that asked to stop
        self.since = 0.0  # time.monotonic() of the first signal
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if not self.flag:
            self.flag, self.signum, self.since = True, signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self.since >= self.GIVE_UP_AFTER_S:
            raise KeyboardInterrupt  # a second Ctrl-C from the user: give up at once

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ------------------------------------------------------------------------------- one step
def targets(stage: Stage, images: torch.Tensor, labels: torch.Tensor):
    """-> (images, class target (B, N) soft, superclass target (B, E) soft or None)."""
    cfg = stage.tcfg.model
    if stage.mixer is not None:
        images, target = stage.mixer(images, labels)
    else:
        target = F.one_hot(labels, cfg.num_classes).float()  # (B, N)
    sc_target = None
    if stage.c2s is not None:
        sc_target = superclass_targets(target, stage.c2s, cfg.num_experts)  # (B, E)
    return images, target, sc_target


def train_step(stage: Stage, state: TrainState, module: nn.Module, images: torch.Tensor,
               labels: torch.Tensor) -> LossParts:
    """Forward and backward of one micro-batch; every ``grad_accum``-th one also steps the optimizer
    (``optimizer_step``). The loss is scaled by 1 / grad_accum, so N micro-batches of B images
    give the gradient of one batch of N x B. Returns the loss parts (detached use only)."""
    tcfg = stage.tcfg
    images, target, sc_target = targets(stage, images, labels)
    distill = None
    if stage.teacher is not None:  # the same augmented batch, no gradient
        with torch.no_grad(), stage.autocast():
            distill = Distill(stage.teacher(images), tcfg.distill, tcfg.distill_weight, tcfg.distill_tau)
    state.micro += 1
    last = state.micro == tcfg.grad_accum
    with contextlib.nullcontext() if last else no_sync(module):  # DDP: all-reduce once, on the last
        with stage.autocast():
            logits, router_logits, aux = module(images)
        parts = mvmoe_loss(logits, router_logits, aux, target, sc_target, label_smoothing=tcfg.label_smoothing,
                           router_weight=tcfg.router_weight, aux_weight=tcfg.aux_weight, distill=distill)
        state.scaler.scale(parts.total / tcfg.grad_accum).backward()
    if last:
        optimizer_step(stage, state)
    return parts


def no_sync(module: nn.Module):
    """DDP's no_sync (skip the gradient all-reduce) for a DDP module, compiled or not."""
    inner = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
    return inner.no_sync() if isinstance(inner, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def optimizer_step(stage: Stage, state: TrainState) -> None:
    """Clip, step (through the GradScaler: a no-op wrapper unless fp16), schedule, EMA, count."""
    if stage.tcfg.clip_grad > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), stage.tcfg.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.micro = 0
    state.step += 1
    state.epoch_step += 1


def check_finite(stage: Stage, state: TrainState, parts: LossParts) -> None:
    """Raise on a non-finite loss (bf16/fp32; fp16's GradScaler skips such steps itself). Called at
    log intervals only: the check waits for the GPU."""
    if stage.amp_dtype != torch.float16 and not torch.isfinite(parts.total):
        tcfg = stage.tcfg
        raise MvmoeError(f"{stage.name}: loss is {float(parts.total.detach())} at step {state.step}; lower lr "
                         f"(now {tcfg.lr} per 512 images, {tcfg.effective_lr:g} effective)")


@dataclass
class EpochResult:
    steps: int = 0  # optimizer steps
    micro_batches: int = 0
    images: int = 0  # over all ranks
    seconds: float = 0.0
    mean_loss: float = float("nan")
    stopped: bool = False


def train_one_epoch(stage: Stage, state: TrainState, module: nn.Module, stop_requested, progress: Progress,
                    max_steps: int = 0) -> EpochResult:
    """Train the rest of epoch ``state.epoch``; stops early (result.stopped) when ``stop_requested()``
    is true on any rank or after ``max_steps`` steps (0 = no limit).

    Host syncs: the loss is read (and checked to be finite) every ``log_every`` steps only, and
    with several processes the stop flag is agreed on at those steps too."""
    info, tcfg = stage.info, stage.tcfg
    if state.epoch_step == 0:
        seed_everything(epoch_seed(tcfg.seed, state.epoch, info.rank))
    elif state.rng_per_rank is not None and len(state.rng_per_rank) == info.world_size:
        restore_rng(state.rng_per_rank[info.rank])
    elif state.rng_per_rank is not None:  # resumed mid-epoch on another world size: same samples, new RNG streams
        seed_everything(epoch_seed(tcfg.seed, state.epoch, info.rank) + state.epoch_step)
    state.rng_per_rank = None
    result = EpochResult()
    loss_sum = torch.zeros((), device=stage.device)
    module.train()
    t0 = time.perf_counter()
    for images, labels in stage.train_loader(state.epoch, state.epoch_step * tcfg.grad_accum):
        images = stage.loader.to_device(images)  # uint8 -> normalised (+ erasing) on the device
        labels = labels.to(stage.device, non_blocking=True)
        parts = train_step(stage, state, module, images, labels)
        result.micro_batches += 1
        result.images += images.shape[0] * info.world_size
        loss_sum += parts.total.detach()
        if state.micro:  # inside an optimizer step
            continue
        result.steps += 1
        ips = result.images / max(time.perf_counter() - t0, 1e-9)
        if state.step % tcfg.log_every == 0:
            check_finite(stage, state, parts)
            progress.update(state.step, float(parts.total.detach()) if progress.enabled else None, ips)
            stage.log.write({"kind": "step", "epoch": state.epoch, "step": state.step,
                             "lr": state.scheduler.get_last_lr()[0], **parts.as_floats(), "images_per_sec": ips})
        else:
            progress.update(state.step, None, ips)
        if should_stop(stage, state, stop_requested, max_steps and result.steps >= max_steps):
            result.stopped = True
            break
        if state.epoch_step >= stage.steps_per_epoch:  # micro-batches short of a whole step are left out
            break
    result.seconds = time.perf_counter() - t0
    result.mean_loss = float(all_reduce_mean(loss_sum / max(result.micro_batches, 1), info))
    return result


def should_stop(stage: Stage, state: TrainState, stop_requested, limit_reached: bool) -> bool:
    """The step limit (the same on every rank) or a stop request; with several processes a request
    (SIGTERM may reach only some ranks) is agreed on every ``log_every`` steps, one all_reduce."""
    if limit_reached:
        return True
    if not stage.info.enabled:
        return bool(stop_requested())
    return state.step % stage.tcfg.log_every == 0 and broadcast_flag(bool(stop_requested()), stage.info)


# ------------------------------------------------------------------------------ checkpoints
def save_state(stage: Stage, state: TrainState, path: Path, *, final: bool = False) -> None:
    """last.pt (``final=False``: resumable, RNG of every rank) or model.pt (weights and metadata).

    Every rank must call it (the RNG states are gathered); rank 0 writes."""
    rng = capture_rng()
    per_rank = [rng]
    if stage.info.enabled:
        per_rank = [None] * stage.info.world_size
        torch.distributed.all_gather_object(per_rank, rng)
    skipped = skipped_files(stage.bundle, stage.info)  # every rank's failures, for the count and resume
    if not stage.info.is_main:
        return
    ck = {"model_config": stage.tcfg.model.to_dict(), **checkpoint_meta(stage), "train_config": stage.tcfg.to_dict()}
    full = state.state_dict()
    if final:
        ck.update({k: full[k] for k in ("model", "ema", "ema_n_averaged", "metrics", "epoch", "step")})
    else:
        ck.update(full, rng=rng, rng_per_rank=per_rank, steps_per_epoch=stage.steps_per_epoch,
                  finished=state.epoch >= stage.tcfg.epochs, sample_order=sample_order(stage, state),
                  skipped_files=skipped)
    save_checkpoint(path, ck)


def checkpoint_meta(stage: Stage) -> dict:
    """class_names, superclasses and data: what a checkpoint and config.json say besides the weights."""
    sc = stage.superclasses
    return {"class_names": list(stage.bundle.class_names),
            "superclasses": {"names": list(sc["names"]), "class_to_superclass": list(sc["class_to_superclass"])}
            if sc else None,
            "data": stage.bundle.checkpoint_info()}


def resume_state(stage: Stage, state: TrainState, path: Path) -> dict | None:
    """Load ``path`` into ``state``; returns the checkpoint dict (None when there is none yet)."""
    if not path.exists():
        stage.say(f"{stage.name}: no {path} yet, starting from scratch")
        return None
    ck = load_checkpoint(path, map_location=stage.device)
    if ModelConfig.from_dict(ck["model_config"]) != stage.tcfg.model:  # (keys added later take their defaults)
        raise MvmoeError(f"{path} was written for another model config; use a new --out or drop --resume")
    if ck.get("steps_per_epoch") != stage.steps_per_epoch:
        raise MvmoeError(f"{path}: {ck.get('steps_per_epoch')} steps per epoch there, {stage.steps_per_epoch} now "
                         "(different data or batch size); cannot resume exactly")
    check_sample_order(stage, ck)
    state.load_state_dict(ck)
    restore_skipped(stage.bundle, ck.get("skipped_files"))  # skipped_images counts them again
    say_world_size_change(stage, ck)
    return ck


def say_world_size_change(stage: Stage, ck: dict) -> None:
    """One line when the run resumes with another number of processes than it stopped with."""
    old = (ck.get("sample_order") or {}).get("world_size") or len(ck.get("rng_per_rank") or [None])
    new = stage.info.world_size
    if old == new:
        return
    engine = (ck.get("sample_order") or {}).get("engine", stage.loader.kind)
    draws = "DALI's augmentation, " if engine == "dali" else ""
    stage.say(f"{stage.name}: resuming with {new} process(es) a run saved by {old}: the same samples in the same "
              f"order from epoch {ck['epoch']}, step {ck['step']}, but the numbers will differ from an uninterrupted "
              f"run by float summation order (gradients summed over {new} partial sums instead of {old}; "
              f"{draws}MixUp, drop path and router noise draw from new per-process streams)")


# ------------------------------------------------------------------------------------- fit
def fit(tcfg: TrainConfig, bundle, out_dir: str | Path, *, superclasses: dict | None = None,
        dist_info: DistInfo | None = None, resume: bool = False, quiet: bool = False, stage: str = "train",
        extra_summary: dict | None = None, init: str | os.PathLike | None = None) -> dict:
    """Train ``tcfg.model`` on ``bundle`` for ``tcfg.epochs`` epochs into ``out_dir``; returns the summary.

    superclasses: a superclasses.json dict (``class_to_superclass``, S == num_experts) for a
    per-image MoE: its router is trained towards it with ``router_weight`` and evaluated on it.
    resume: continue from DIR/last.pt (a finished stage just returns its summary). The summary is
    ``{"stopped": True, ...}`` when SIGTERM/Ctrl-C or ``stop_after_steps`` ended it early.
    init: weights the stage starts from (``models.weights.load_pretrained``), read only when the
    stage has no last.pt to resume. torch's thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    st = Stage(tcfg, bundle, Path(out_dir), stage, dist_info or DistInfo(), superclasses, quiet)
    if tcfg.threads and st.device.type == "cpu":
        torch.set_num_threads(tcfg.threads)
    try:
        state = build_state(st, None if resume and (st.out / "last.pt").exists() else init)
        ck = resume_state(st, state, st.out / "last.pt") if resume else None
        if ck is not None and state.epoch >= tcfg.epochs and (st.out / "summary.json").exists():
            st.say(f"{stage}: already finished in {st.out}")
            return finished_summary(st.out)
        if ck is not None:
            st.log.trim(state.step)  # rows a killed run logged after its last.pt
            st.say(f"{stage}: resuming {st.out / 'last.pt'} at epoch {state.epoch}, step {state.step}")
        stopped = run_epochs(st, state)
        return finish(st, state, stopped, extra_summary)
    finally:
        close_loader(st)
        torch.set_num_threads(threads)


def close_loader(stage: Stage) -> None:
    """The loader's workers ignore SIGTERM: shut them down before the process exits."""
    close = getattr(stage.loader, "close", None)
    if close is not None:
        close()


def adopt(tcfg: TrainConfig, bundle, out_dir: str | Path, init: str | os.PathLike, *,
          dist_info: DistInfo | None = None, quiet: bool = False, stage: str = "dense") -> dict:
    """A stage of zero epochs: ``tcfg.model`` with the weights of ``init``, evaluated and saved as a
    finished stage (model.pt, model.safetensors, summary.json with ``epochs`` 0); returns the summary."""
    st = Stage(tcfg, bundle, Path(out_dir), stage, dist_info or DistInfo(), None, quiet)
    try:
        state = build_state(st, init)
        state.metrics = {**evaluate(state.eval_model, st.val_loader(), device=st.device, amp_dtype=st.amp_dtype,
                                    reduce=functools.partial(all_reduce_sum, info=st.info)), "weights": "model"}
        st.say(f"{stage}: {init} taken as it is (0 epochs), val top-1 {state.metrics['top1']:.2f}%")
        if st.info.is_main:
            st.out.mkdir(parents=True, exist_ok=True)
        return finish(st, state, None, {"epochs": 0, "init": str(init)})
    finally:
        close_loader(st)


def run_epochs(stage: Stage, state: TrainState) -> str | None:
    """The epoch loop, with evaluation and last.pt after every epoch. Returns why it stopped early
    (SIGINT, SIGTERM or stop_after_steps), None when it ran every epoch."""
    tcfg, info = stage.tcfg, stage.info
    module = training_module(stage, state.model)
    if info.is_main:
        stage.out.mkdir(parents=True, exist_ok=True)
    last = stage.out / "last.pt"
    progress = Progress(stage.steps_per_epoch * tcfg.epochs, state.step, stage.name,
                        enabled=info.is_main and not stage.quiet)
    steps_left = tcfg.stop_after_steps
    with StopRequest() as stop, progress:
        while state.epoch < tcfg.epochs:
            r = train_one_epoch(stage, state, module, lambda: stop.flag, progress, max_steps=steps_left)
            state.seconds += r.seconds
            state.images_seen += r.images
            if steps_left:
                steps_left -= r.steps  # still > 0: reaching the limit sets r.stopped, which returns below
            if r.stopped and state.epoch_step < stage.steps_per_epoch:
                save_state(stage, state, last)  # mid-epoch: keeps epoch and epoch_step
                return stop_reason(stop)
            end_epoch(stage, state, r, progress)
            save_state(stage, state, last)
            if r.stopped:
                return stop_reason(stop) if state.epoch < tcfg.epochs else None
            if state.epoch < tcfg.epochs and broadcast_flag(stop.flag, info):  # a signal after the last check
                return stop_reason(stop)
    return None


def stop_reason(stop: StopRequest) -> str:
    return signal.Signals(stop.signum).name if stop.signum is not None else "stop_after_steps"


def training_module(stage: Stage, model: MobileVMoE) -> nn.Module:
    """What the loop calls: RoutingForward(model), in DDP with several processes, compiled with
    ``compile=true`` (torch.compile over the DDP module, as torch's DDP notes advise)."""
    module: nn.Module = RoutingForward(model)
    if stage.info.enabled:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[stage.device.index] if stage.device.type == "cuda" else None)
    if stage.tcfg.compile:
        module = torch.compile(module)
    return module


def end_epoch(stage: Stage, state: TrainState, r: EpochResult, progress: Progress) -> None:
    """Count the epoch, log it, and evaluate when due (every rank its shard; counts summed)."""
    tcfg = stage.tcfg
    state.epoch, state.epoch_step = state.epoch + 1, 0
    stage.log.write({"kind": "epoch", "epoch": state.epoch, "step": state.step, "train_loss": r.mean_loss,
                     "images_per_sec": r.images / max(r.seconds, 1e-9), "seconds": r.seconds,
                     "lr": state.scheduler.get_last_lr()[0]})
    if state.epoch % tcfg.eval_every and state.epoch != tcfg.epochs:
        return
    ev = evaluate(state.eval_model, stage.val_loader(), class_to_superclass=stage.c2s, device=stage.device,
                  amp_dtype=stage.amp_dtype, reduce=functools.partial(all_reduce_sum, info=stage.info))
    ev["weights"] = "ema" if state.ema is not None else "model"
    state.metrics = ev
    if stage.info.is_main:
        stage.log.write({"kind": "eval", "epoch": state.epoch, "step": state.step,
                         **{k: v for k, v in ev.items() if not isinstance(v, list)}})
        router = ev.get("router_superclass_top1")
        progress.note(f"{stage.name} epoch {state.epoch}/{tcfg.epochs}: loss {r.mean_loss:.3f}, "
                      f"val top-1 {ev['top1']:.2f}%"
                      + (f", router superclass top-1 {router:.1f}%" if router is not None else ""))
    barrier(stage.info)


def finish(stage: Stage, state: TrainState, stopped: str | None, extra_summary: dict | None) -> dict:
    """model.pt and summary.json of a finished stage, or the ``stopped`` record of an early stop."""
    barrier(stage.info)
    last = stage.out / "last.pt"
    if stopped:
        stage.say(f"{stage.name}: stopped at epoch {state.epoch}, step {state.step}; saved {last}")
        return {"stopped": True, "reason": stopped, "epoch": state.epoch, "step": state.step, "last": str(last)}
    save_state(stage, state, stage.out / "model.pt", final=True)
    if stage.info.is_main:  # the same weights in the ecosystem's format, beside model.pt
        save_pretrained(stage.out, stage.tcfg.model, state.eval_model.state_dict(), checkpoint_meta(stage))
    summary = make_summary(stage, state)
    summary.update(extra_summary or {})
    if stage.info.is_main:
        atomic_write_json(stage.out / "summary.json", summary)
    barrier(stage.info)
    return summary


def finished_summary(out: Path) -> dict:
    """The summary.json of a finished stage, its paths made to point where the run is now."""
    summary = read_json_object(out / "summary.json")
    summary["checkpoint"] = str(out / "model.pt")
    return summary


# expert usage on the eval split, in every MoE run's summary (see train/evaluate.py ExpertUsage)
USAGE_KEYS = ("expert_usage_unit", "expert_counts", "expert_entropy", "expert_entropy_max", "token_drop_fraction")


def make_summary(stage: Stage, state: TrainState) -> dict:
    """summary.json of a stage: the documented keys first, then details (docs/formats.md)."""
    cfg, tcfg, ev, sc = stage.tcfg.model, stage.tcfg, state.metrics, stage.superclasses
    report = profile_flops(MobileVMoE(cfg), dispatch="gather")
    routing = "none" if not cfg.is_moe else cfg.routing
    return {
        "model": cfg.name, "dataset": stage.bundle.name,
        "top1": ev.get("top1"), "top5": ev.get("top5"),
        "router_superclass_top1": ev.get("router_superclass_top1") if cfg.is_per_image else None,
        "macs": report.macs, "params": report.params, "active_params": report.active_params,
        "epochs": tcfg.epochs, "images_per_sec": round(state.images_seen / max(state.seconds, 1e-9), 2),
        "routing": routing, "num_experts": cfg.num_experts, "top_k": cfg.top_k if cfg.is_moe else 0,
        "router_weight": tcfg.router_weight if cfg.is_per_image else None,
        "seed": tcfg.seed, "stage": stage.name, "teacher": stage.teacher_info,
        "superclass_names": list(sc["names"]) if sc else None,
        "expert_usage": ev.get("expert_usage") if cfg.is_per_image else None,
        **({k: ev.get(k) for k in USAGE_KEYS if k in ev} if cfg.is_moe else {}),
        "checkpoint": str(stage.out / "model.pt"),
        # rank 0 wrote model.pt (save_state); `mvmoe report` matches latency files by this hash
        "checkpoint_sha256": file_sha256(stage.out / "model.pt") if stage.info.is_main else None,
        "skipped_images": skipped_images(stage.bundle, stage.info),
        "eval_weights": ev.get("weights"), "val_images": ev.get("images"),
        "train_seconds": round(state.seconds, 2), "world_size": stage.info.world_size,
        "model_config": cfg.to_dict(), "train_config": tcfg.to_dict(),
        "commit": git_state()[0],  # the code that finished this stage (run.json: the full provenance)
    }
