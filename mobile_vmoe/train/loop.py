"""One training stage: a model, a dataset, a TrainConfig -> a run directory.

``fit`` trains one model (the dense baseline or the MoE) and writes, on rank 0::

    DIR/last.pt        everything needed to resume (weights, EMA, optimizer, scheduler, RNG, position)
    DIR/model.pt       the final model (EMA weights under "ema" when EMA is on), no optimizer
    DIR/metrics.jsonl  {"kind": "step" | "epoch" | "eval", "epoch", "step", ...} per line
    DIR/summary.json   the contract keys (see ``summary``)

Determinism (what makes resume == uninterrupted on CPU): the data order of epoch e is
DistributedSampler(seed).set_epoch(e) (seed + e); the global RNG (augmentation, MixUp, drop path,
router noise) is reseeded at each epoch start from (seed, epoch, rank); a mid-epoch stop saves the
RNG states of every rank and how many batches of the epoch were done, and resume skips them. The
DataLoader gets its own generator so creating it does not consume the global RNG.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from ..checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig
from ..errors import MvmoeError
from ..models import MobileVMoE
from .distributed import DistInfo, all_reduce_mean, barrier, broadcast_flag
from .ema import build_ema, ema_state, load_ema_state
from .evaluate import evaluate
from .losses import mvmoe_loss
from .optim import build_optimizer, build_scheduler
from .state import capture_rng, epoch_seed, restore_rng, seed_everything


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
    """SIGTERM / Ctrl-C set a flag; the loop finishes its step, saves last.pt and returns."""

    def __init__(self):
        self.flag = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.flag:  # second signal: give up at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA for amp=auto; fp32 on CPU unless amp=bf16 asks for it."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def superclass_info(superclasses: dict | None) -> dict | None:
    if superclasses is None:
        return None
    return {"names": list(superclasses["names"]), "class_to_superclass": list(superclasses["class_to_superclass"])}


def fit(cfg: ModelConfig, bundle, tcfg: TrainConfig, out_dir: str | Path, **kwargs) -> dict:
    """Train one stage (see ``_fit``); torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        return _fit(cfg, bundle, tcfg, out_dir, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: ModelConfig, bundle, tcfg: TrainConfig, out_dir: str | Path, *, superclasses: dict | None = None,
         dist_info: DistInfo | None = None, resume: bool = False, quiet: bool = False, stage: str = "train",
         extra_summary: dict | None = None) -> dict:
    """Train ``cfg`` on ``bundle`` for ``tcfg.epochs`` epochs; returns the summary dict.

    superclasses: the dict of a superclasses JSON (``class_to_superclass`` with S == num_experts)
    for a per-image MoE: its router is trained towards it with ``router_weight`` and evaluated on
    it. resume: continue from DIR/last.pt (a finished stage just returns its summary).
    The summary has ``"stopped": True`` when SIGTERM/Ctrl-C or ``stop_after_steps`` ended it early.
    """
    info = dist_info or DistInfo()
    out = Path(out_dir)
    device = info.device
    per_image = cfg.is_moe and cfg.routing == "image"
    if superclasses is not None and per_image and superclasses["num_superclasses"] != cfg.num_experts:
        raise MvmoeError(f"{superclasses['num_superclasses']} superclasses for {cfg.num_experts} experts: the router "
                         "learns superclass i as expert i, so they must be equal")
    if not per_image:
        superclasses = None  # dense and per-token models have no router target
    c2s = torch.tensor(superclasses["class_to_superclass"], dtype=torch.long) if superclasses else None

    # ---------------------------------------------------------------- batches
    if tcfg.batch_size % info.world_size:
        raise MvmoeError(f"batch_size={tcfg.batch_size} is not divisible by the {info.world_size} processes")
    local_bs = tcfg.batch_size // info.world_size
    sampler = DistributedSampler(bundle.train, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=tcfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // local_bs
    if steps_per_epoch == 0:
        raise MvmoeError(f"{len(bundle.train)} training images are fewer than one batch of {tcfg.batch_size}: "
                         f"lower it with --set batch_size=N")
    total_steps = steps_per_epoch * tcfg.epochs
    warmup_steps = round(tcfg.warmup_epochs * steps_per_epoch)
    val_loader = DataLoader(bundle.val, batch_size=max(local_bs, 64), shuffle=False, num_workers=tcfg.workers)

    if tcfg.threads and device.type == "cpu":
        torch.set_num_threads(tcfg.threads)

    # ------------------------------------------------------------------ model
    seed_everything(tcfg.seed)
    model = MobileVMoE(cfg).to(device)
    ema = build_ema(model, tcfg.ema_decay)
    optimizer = build_optimizer(model, tcfg.lr, tcfg.weight_decay, (tcfg.betas1, tcfg.betas2))
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps, tcfg.min_lr / tcfg.lr)
    amp_dtype = amp_dtype_for(tcfg.amp, device)

    epoch, step, epoch_step, seconds, images_seen = 0, 0, 0, 0.0, 0
    rng_per_rank = None
    last_eval: dict = {}
    last_path = out / "last.pt"
    if resume and last_path.exists():
        ck = load_checkpoint(last_path, map_location=device)
        if ck["model_config"] != cfg.to_dict():
            raise MvmoeError(f"{last_path} was written for another model config; use a new --out or drop --resume")
        if ck.get("steps_per_epoch") != steps_per_epoch:
            raise MvmoeError(f"{last_path}: {ck.get('steps_per_epoch')} steps per epoch there, {steps_per_epoch} now "
                             "(different data or batch size); cannot resume exactly")
        if ck.get("finished") and (out / "summary.json").exists() and ck["epoch"] >= tcfg.epochs:
            if info.is_main and not quiet:
                print(f"{stage}: already finished in {out}")
            return json.loads((out / "summary.json").read_text())
        model.load_state_dict(ck["model"])
        if ema is not None and ck.get("ema") is not None:
            load_ema_state(ema, ck["ema"], ck.get("ema_n_averaged", 0))
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        epoch, step, epoch_step = ck["epoch"], ck["step"], ck.get("epoch_step", 0)
        seconds, images_seen = ck.get("train_seconds", 0.0), ck.get("images_seen", 0)
        last_eval = ck.get("metrics") or {}
        rng_per_rank = ck.get("rng_per_rank")
        if info.is_main and not quiet:
            print(f"{stage}: resuming {last_path} at epoch {epoch}, step {step}")
    elif resume and info.is_main and not quiet:
        print(f"{stage}: no {last_path} yet, starting from scratch")
    train_module: nn.Module = RoutingForward(model)
    if info.enabled:
        train_module = nn.parallel.DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None)
    mixer = None
    if tcfg.mixup > 0 or tcfg.cutmix > 0:
        from ..data import MixupCutmix

        mixer = MixupCutmix(cfg.num_classes, tcfg.mixup, tcfg.cutmix, tcfg.mix_prob)

    def checkpoint(path: Path, *, final: bool = False) -> None:
        rng = capture_rng()
        per_rank = [rng]
        if info.enabled:
            per_rank = [None] * info.world_size
            torch.distributed.all_gather_object(per_rank, rng)
        if not info.is_main:
            return
        ck = {
            "model_config": cfg.to_dict(), "model": model.state_dict(),
            "ema": ema_state(ema)[0] if ema is not None else None,
            "ema_n_averaged": ema_state(ema)[1] if ema is not None else 0,
            "class_names": list(bundle.class_names), "superclasses": superclass_info(superclasses),
            "data": bundle.checkpoint_info(), "train_config": tcfg.to_dict(), "metrics": last_eval,
            "epoch": epoch, "step": step,
        }
        if not final:
            ck.update(epoch_step=epoch_step, steps_per_epoch=steps_per_epoch, optimizer=optimizer.state_dict(),
                      scheduler=scheduler.state_dict(), rng=rng, rng_per_rank=per_rank,
                      train_seconds=seconds, images_seen=images_seen, finished=epoch >= tcfg.epochs)
        save_checkpoint(path, ck)

    metrics_file = out / "metrics.jsonl"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    def log(record: dict) -> None:
        if info.is_main:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    progress = _Progress(total_steps, step, stage, enabled=info.is_main and not quiet)
    loader_gen = torch.Generator()
    stopped = False
    steps_this_run = 0
    with StopRequest() as stop, progress:
        while epoch < tcfg.epochs and not stopped:
            if epoch_step == 0:
                seed_everything(epoch_seed(tcfg.seed, epoch, info.rank))
            elif rng_per_rank is not None:
                restore_rng(rng_per_rank[info.rank])
            rng_per_rank = None
            sampler.set_epoch(epoch)
            indices = list(sampler)[epoch_step * local_bs:]
            loader_gen.manual_seed(epoch_seed(tcfg.seed, epoch, info.rank))
            loader = DataLoader(bundle.train, batch_size=local_bs, sampler=indices, drop_last=True,
                                num_workers=tcfg.workers, generator=loader_gen, pin_memory=device.type == "cuda")
            train_module.train()
            t0, n0, loss_sum, loss_n = time.perf_counter(), 0, torch.zeros((), device=device), 0
            for images, labels in loader:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                if mixer is not None:
                    images, target = mixer(images, labels)
                else:
                    target = torch.nn.functional.one_hot(labels, cfg.num_classes).float()  # (B, N)
                sc_target = None
                if c2s is not None:
                    from ..data import superclass_targets

                    sc_target = superclass_targets(target, c2s.to(device), cfg.num_experts)  # (B, E)
                autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                            else contextlib.nullcontext())
                with autocast:
                    logits, router_logits, aux = train_module(images)
                parts = mvmoe_loss(SimpleNamespace(logits=logits, router_logits=router_logits, aux_loss=aux),
                                   target, sc_target, label_smoothing=tcfg.label_smoothing,
                                   router_weight=tcfg.router_weight, aux_weight=tcfg.aux_weight)
                if not torch.isfinite(parts.total):
                    raise MvmoeError(f"{stage}: loss is {float(parts.total)} at step {step}; lower lr (now {tcfg.lr})")
                optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                if tcfg.clip_grad > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_grad)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                epoch_step += 1
                steps_this_run += 1
                n0 += images.shape[0] * info.world_size
                loss_sum += parts.total.detach()
                loss_n += 1
                elapsed = time.perf_counter() - t0
                ips = n0 / max(elapsed, 1e-9)
                progress.update(step, float(parts.total.detach()) if progress.enabled else 0.0, ips, epoch)
                if step % tcfg.log_every == 0:
                    log({"kind": "step", "epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0],
                         **parts.as_floats(), "images_per_sec": ips})
                want_stop = stop.flag or (tcfg.stop_after_steps and steps_this_run >= tcfg.stop_after_steps)
                if broadcast_flag(bool(want_stop), info):
                    stopped = True
                    break
            epoch_seconds = time.perf_counter() - t0
            seconds += epoch_seconds
            images_seen += n0
            if stopped and epoch_step < steps_per_epoch:
                break  # mid-epoch: last.pt below keeps epoch and epoch_step
            epoch, epoch_step = epoch + 1, 0
            mean_loss = float(all_reduce_mean(loss_sum / max(loss_n, 1), info))
            log({"kind": "epoch", "epoch": epoch, "step": step, "train_loss": mean_loss,
                 "images_per_sec": n0 / max(epoch_seconds, 1e-9), "seconds": epoch_seconds,
                 "lr": scheduler.get_last_lr()[0]})
            if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
                if info.is_main:
                    last_eval = evaluate(ema.module if ema is not None else model, val_loader,
                                         class_to_superclass=c2s, device=device, amp_dtype=amp_dtype)
                    last_eval["weights"] = "ema" if ema is not None else "model"
                    log({"kind": "eval", "epoch": epoch, "step": step,
                         **{k: v for k, v in last_eval.items() if k != "expert_usage"}})
                    progress.note(f"{stage} epoch {epoch}/{tcfg.epochs}: loss {mean_loss:.3f}, "
                                  f"val top-1 {last_eval['top1']:.2f}%"
                                  + (f", router superclass top-1 {last_eval['router_superclass_top1']:.1f}%"
                                     if last_eval.get("router_superclass_top1") is not None else ""))
                barrier(info)
            checkpoint(last_path)
        if stopped:
            checkpoint(last_path)
    barrier(info)
    images_per_sec = images_seen / max(seconds, 1e-9)
    if stopped and epoch < tcfg.epochs:
        if info.is_main and not quiet:
            print(f"{stage}: stopped at epoch {epoch}, step {step}; saved {last_path} (continue with --resume)")
        return {"stopped": True, "epoch": epoch, "step": step, "last": str(last_path)}
    checkpoint(out / "model.pt", final=True)
    summary = make_summary(cfg, bundle, tcfg, superclasses, last_eval, images_per_sec, out, seconds)
    summary["world_size"] = info.world_size
    summary.update(extra_summary or {})
    if info.is_main:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    barrier(info)
    return summary


def make_summary(cfg: ModelConfig, bundle, tcfg: TrainConfig, superclasses: dict | None, ev: dict,
                 images_per_sec: float, out: Path, seconds: float) -> dict:
    """The summary.json of a stage: the contract keys first, then details."""
    from ..profile.flops import profile_flops

    report = profile_flops(MobileVMoE(cfg), dispatch="gather")
    routing = "none" if not cfg.is_moe else cfg.routing
    return {
        "model": cfg.name, "dataset": bundle.name,
        "top1": ev.get("top1"), "top5": ev.get("top5"),
        "router_superclass_top1": ev.get("router_superclass_top1") if routing == "image" else None,
        "macs": report.macs, "params": report.params, "active_params": report.active_params,
        "epochs": tcfg.epochs, "images_per_sec": round(images_per_sec, 2),
        "routing": routing, "num_experts": cfg.num_experts, "top_k": cfg.top_k if cfg.is_moe else 0,
        "router_weight": tcfg.router_weight if routing == "image" else None,
        "seed": tcfg.seed,
        "superclass_names": list(superclasses["names"]) if superclasses else None,
        "expert_usage": ev.get("expert_usage") if routing == "image" else None,
        "checkpoint": str(out / "model.pt"),
        "eval_weights": ev.get("weights"), "val_images": ev.get("images"),
        "train_seconds": round(seconds, 2), "model_config": cfg.to_dict(), "train_config": tcfg.to_dict(),
    }


class _Progress:
    """A rich progress bar (loss, images/s, ETA) on rank 0; silent when disabled."""

    def __init__(self, total: int, done: int, stage: str, enabled: bool):
        self.enabled = enabled
        self._bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._task = self._bar.add_task(stage, total=total, completed=done, loss=math.nan, ips=0.0)

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def update(self, step: int, loss: float, ips: float, epoch: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, ips=ips)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
