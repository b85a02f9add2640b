"""Training: schedule, losses, parameter groups, model adaptation, resume == uninterrupted,
an end-to-end run on a generated ImageFolder tree (all three stages)."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from mobile_vmoe.checkpoint import load_checkpoint, model_from_checkpoint
from mobile_vmoe.config import ModelConfig, TrainConfig, parse_overrides
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.data.synthetic import build_synthetic
from mobile_vmoe.models import MobileVMoE
from mobile_vmoe.train import adapt_to_data, fit, resolve, train
from mobile_vmoe.train.losses import mvmoe_loss
from mobile_vmoe.train.optim import build_scheduler, param_groups

TINY = dict(depth=2, width=32, heads=2, mlp_ratio=2.0, patch_size=4)


def _lrs(total: int, warmup: int, min_ratio: float, peak: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = build_scheduler(opt, total, warmup, min_ratio)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_warmup_then_cosine():
    # warmup 2 of 6 steps: 1/2, 2/2, then cos over 4 steps: (1 + cos(pi t)) / 2 for t = 0, 1/4, 2/4, 3/4
    assert _lrs(6, 2, 0.0) == pytest.approx([0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    # min_ratio lifts the floor: 0.1 + 0.9 * 0.5 at the middle of the cosine (peak 2 -> x 2)
    assert _lrs(6, 2, 0.1, peak=2.0)[4] == pytest.approx(2 * 0.55)
    # no warmup (0 or 1 step): the cosine from the first step
    assert _lrs(4, 0, 0.0) == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    assert _lrs(4, 1, 0.0)[0] == pytest.approx(1.0)
    # a long run stays on the closed form (the chained cosine does not drift)
    long = _lrs(5000, 300, 0.003)
    assert long[299] == pytest.approx(1.0) and long[0] == pytest.approx(1 / 300)
    t = (4000 - 300) / 4700
    assert long[4000] == pytest.approx(0.003 + 0.997 * 0.5 * (1 + math.cos(math.pi * t)), abs=1e-6)


class _Out:  # a per-image MoE output: 2 classes, 2 experts
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    router_logits = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [0.75, 0.25]


def _loss(sc_target, **kw):
    return mvmoe_loss(_Out.logits, _Out.router_logits, None, torch.tensor([[1.0, 0.0]]), sc_target, **kw)


def test_class_loss_with_label_smoothing_by_hand():
    assert float(_loss(None, label_smoothing=0.0, router_weight=0.3, aux_weight=0.0).cls) == pytest.approx(math.log(4.0))
    # smoothing 0.2 over 2 classes: target [0.9, 0.1] -> 0.9 * ln 4 + 0.1 * ln(4/3)
    want = 0.9 * math.log(4.0) + 0.1 * math.log(4.0 / 3.0)
    assert float(_loss(None, label_smoothing=0.2, router_weight=0.3, aux_weight=0.0).cls) == pytest.approx(want)


def test_router_loss_enters_with_its_weight():
    sc_t = torch.tensor([[0.5, 0.5]])  # a mixed image: half superclass 0, half superclass 1
    router = 0.5 * math.log(4 / 3) + 0.5 * math.log(4.0)
    parts = _loss(sc_t, label_smoothing=0.0, router_weight=0.3, aux_weight=0.01)
    assert float(parts.router) == pytest.approx(router)
    assert float(parts.total) == pytest.approx(math.log(4.0) + 0.3 * router)
    end_to_end = _loss(sc_t, label_smoothing=0.0, router_weight=0.0, aux_weight=0.01)
    assert float(end_to_end.total) == pytest.approx(math.log(4.0))  # logged, not trained


def test_no_weight_decay_on_norms_biases_embeddings():
    model = MobileVMoE(ModelConfig(img_size=16, num_classes=4, num_experts=2, moe_blocks=1, **TINY))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no = {names[id(p)] for p in no_decay["params"]}
    yes = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.1.mlp.experts.b1",
            "blocks.1.mlp.experts.b2", "blocks.0.attn.qkv.bias"} <= no
    assert {"blocks.1.mlp.experts.w1", "blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight",
            "router.proj.weight"} <= yes
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(no) + len(yes) == len(list(model.parameters()))


def test_settings_reach_model_and_train_config():
    settings = parse_overrides(["depth=3", "lr=0.01", "router_weight=0"])
    assert settings == {"depth": 3, "lr": 0.01, "router_weight": 0.0}
    tcfg = TrainConfig().with_settings(settings)
    assert (tcfg.model.depth, tcfg.lr, tcfg.router_weight) == (3, 0.01, 0.0)
    assert TrainConfig.from_dict(tcfg.to_dict()) == tcfg and tcfg.to_dict()["model"]["depth"] == 3
    with pytest.raises(MvmoeError, match="unknown key"):
        parse_overrides(["lrr=1"])
    with pytest.raises(MvmoeError, match="label_smoothing=1.5"):
        TrainConfig(label_smoothing=1.5)


def test_adapt_to_data_sets_size_classes_patch_and_name():
    bundle = build_synthetic(6, 3, 32, train_per_class=1, val_per_class=1)
    from mobile_vmoe.models.registry import get_config

    cfg = adapt_to_data(get_config("vmoe-6x64-p32"), bundle, {"num_experts": 3})
    assert (cfg.img_size, cfg.num_classes, cfg.patch_size, cfg.num_tokens) == (32, 6, 8, 17)
    assert cfg.name == "vmoe-6x64-p8-e3"
    kept = adapt_to_data(get_config("vit-6x64-p32"), bundle, {"patch_size": 4})
    assert (kept.patch_size, kept.name) == (4, "vit-6x64-p4")


def _tiny_bundle():
    # 4 classes in 2 planted superclasses, 16 train images per class -> 4 steps of 16 per epoch
    return build_synthetic(4, 2, 16, train_per_class=16, val_per_class=4, seed=0)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
    """3 epochs straight vs stopped at step 6 (inside epoch 2) + resumed: identical weights.

    MixUp/CutMix, drop path, augmentation and EMA all draw random numbers or carry state, so any
    lost RNG state, sampler position or optimizer moment would show up as a difference.
    """
    bundle = _tiny_bundle()
    cfg = ModelConfig(name="tiny", img_size=16, num_classes=4, num_experts=2, moe_blocks=1, drop_path=0.1, **TINY)
    sc = {"num_superclasses": 2, "class_to_superclass": bundle.planted_superclasses, "names": ["a", "b"]}
    tcfg = TrainConfig(model=cfg, epochs=3, batch_size=16, lr=1e-3, warmup_epochs=1, mixup=0.8, cutmix=1.0,
                       ema_decay=0.9, log_every=1)
    full = fit(tcfg, bundle, tmp_path / "full", superclasses=sc, quiet=True)
    part = fit(tcfg.replace(stop_after_steps=6), bundle, tmp_path / "split", superclasses=sc, quiet=True)
    assert part["stopped"] and (part["epoch"], part["step"]) == (1, 6)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch_step"] == 2
    again = fit(tcfg, bundle, tmp_path / "split", superclasses=sc, resume=True, quiet=True)
    a, b = load_checkpoint(tmp_path / "full" / "model.pt"), load_checkpoint(tmp_path / "split" / "model.pt")
    assert a["step"] == b["step"] == 12
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    assert again["top1"] == full["top1"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, 13))  # one line per step, none lost or repeated across the resume


@pytest.mark.slow
def test_end_to_end_imagefolder_all_stages(tmp_path):
    """Dense twin -> superclasses.json -> MoE on a PNG tree; the summary's numbers are the model's."""
    from helpers import write_imagefolder
    from mobile_vmoe.data import build_data
    from mobile_vmoe.train.evaluate import evaluate

    root = write_imagefolder(tmp_path / "data", 4, 2, 16, train_per_class=16, val_per_class=6)
    out = tmp_path / "run"
    tcfg, bundle = resolve("vmoe-6x64-p32", str(root), {**TINY, "num_experts": 2, "moe_blocks": 1, "batch_size": 16,
                                                         "img_size": 16, "log_every": 1}, epochs=1)
    s = train(tcfg, bundle, out, quiet=True)
    for f in ("run.json", "last.pt", "model.pt", "metrics.jsonl", "summary.json", "superclasses.json",
              "dense/model.pt", "dense/summary.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "summary.json").read_text()) == s
    assert (s["model"], s["dataset"], s["routing"], s["num_experts"], s["epochs"]) == ("vmoe-2x32-p4-e2", "data", "image", 2, 1)
    assert s["dense"]["model"] == "vit-2x32-p4" and s["router_weight"] == 0.3
    sc = json.loads((out / "superclasses.json").read_text())
    assert s["superclass_names"] == sc["names"] and sorted(set(sc["class_to_superclass"])) == [0, 1]
    # recompute the metrics from the checkpoint on the folder's val split: they must match exactly
    model, ck = model_from_checkpoint(out / "model.pt")
    bundle = build_data(str(root), 16, augment="none")
    ev = evaluate(model, torch.utils.data.DataLoader(bundle.val, batch_size=7),
                  class_to_superclass=torch.tensor(ck["superclasses"]["class_to_superclass"]))
    assert ev["top1"] == pytest.approx(s["top1"]) and ev["router_superclass_top1"] == pytest.approx(s["router_superclass_top1"])
    assert ev["expert_usage"] == s["expert_usage"] and sum(map(sum, s["expert_usage"])) == 24
    assert ck["class_names"] == bundle.class_names and ck["data"]["img_size"] == 16
    assert ck["data"]["preprocess"] == {"kind": "imagefolder", "crop_ratio": 0.875, "polarity": None}  # for the exporter
    assert s["active_params"] < s["params"] and s["macs"] > 0 and s["images_per_sec"] > 0
    assert sc["classes"] == bundle.class_names
    kinds = [json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kinds == ["step"] * 4 + ["epoch", "eval"]  # 64 images / 16 = 4 steps per epoch, log_every=1


@pytest.mark.parametrize("routing, weight_key, part", [("token", "aux_weight", "loss_aux"), ("image", "router_weight", "loss_router")])
def test_logged_loss_is_ce_plus_weighted_routing_term(tmp_path, routing, weight_key, part):
    """Every step line obeys loss = loss_cls + weight * (router CE | per-token aux loss)."""
    bundle = _tiny_bundle()
    cfg = ModelConfig(name="t", img_size=16, num_classes=4, num_experts=2, moe_blocks=1, routing=routing, **TINY)
    sc = {"num_superclasses": 2, "class_to_superclass": bundle.planted_superclasses, "names": ["a", "b"]}
    tcfg = TrainConfig(model=cfg, epochs=1, batch_size=16, log_every=1, ema_decay=0.0, **{weight_key: 0.25})
    s = fit(tcfg, bundle, tmp_path, superclasses=sc, quiet=True)
    steps = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"step"' in l[:20]]
    assert len(steps) == 4
    for rec in steps:
        assert rec["loss"] == pytest.approx(rec["loss_cls"] + 0.25 * rec[part], rel=1e-5)
    assert s["routing"] == routing and s["eval_weights"] == "model"
    if routing == "token":  # no per-image router: no superclass metrics
        assert s["router_superclass_top1"] is None and s["expert_usage"] is None and s["superclass_names"] is None
    else:
        assert sum(map(sum, s["expert_usage"])) == 16 and s["superclass_names"] == ["a", "b"]


def test_sigterm_sets_the_stop_flag_and_restores_the_handler():
    import signal

    from mobile_vmoe.train.loop import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.flag
        signal.raise_signal(signal.SIGTERM)  # handled: sets the flag, does not kill the process
        assert stop.flag
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_after_a_kill_keeps_one_metrics_row_per_step(tmp_path):
    """A kill after some logged steps but before the next last.pt: the resumed run relogs those
    steps, and metrics.jsonl must still hold each step once."""
    import shutil

    bundle = _tiny_bundle()
    cfg = ModelConfig(name="tiny", img_size=16, num_classes=4, **TINY)
    tcfg = TrainConfig(model=cfg, epochs=2, batch_size=16, log_every=1, ema_decay=0.0)
    run = tmp_path / "run"
    fit(tcfg.replace(stop_after_steps=4), bundle, run, quiet=True)  # last.pt at step 4 (end of epoch 1)
    epoch1 = load_checkpoint(run / "last.pt")
    shutil.copy(run / "last.pt", tmp_path / "at4.pt")
    fit(tcfg.replace(stop_after_steps=3), bundle, run, resume=True, quiet=True)  # logs steps 5-7
    shutil.copy(tmp_path / "at4.pt", run / "last.pt")  # ... but the kill lost the last.pt of step 7
    assert epoch1["step"] == 4
    fit(tcfg, bundle, run, resume=True, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 9))
    assert [r["epoch"] for r in rows if r["kind"] == "eval"] == [1, 2]


def test_train_state_round_trip(tmp_path):
    """TrainState.state_dict -> load_state_dict restores weights, optimizer moments, schedule, position."""
    from mobile_vmoe.train.loop import Stage, build_state

    bundle = _tiny_bundle()
    tcfg = TrainConfig(model=ModelConfig(name="t", img_size=16, num_classes=4, num_experts=2, moe_blocks=1, **TINY),
                       epochs=2, batch_size=16, ema_decay=0.9)
    stage = Stage(tcfg, bundle, tmp_path)
    a = build_state(stage)
    x, y = next(iter(stage.train_loader(0, 0)))
    from mobile_vmoe.train.loop import RoutingForward, train_step

    train_step(stage, a, RoutingForward(a.model), x, y)
    a.epoch_step, a.seconds, a.metrics = 1, 2.5, {"top1": 50.0}
    torch.manual_seed(123)  # a different init for b
    b = build_state(stage)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.epoch_step, b.seconds, b.metrics) == (1, 1, 2.5, {"top1": 50.0})
    assert b.scheduler.get_last_lr() == pytest.approx(a.scheduler.get_last_lr())
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n
    for n, p in a.eval_model.state_dict().items():
        assert torch.equal(p, b.eval_model.state_dict()[n]), n
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_end_to_end_router_is_balanced_and_usage_recorded_for_every_moe_run(tmp_path):
    """No superclasses: the per-image router trains with + aux_weight * (importance + Switch load);
    with superclasses the balancing term is logged but not added. Both record expert usage on eval."""
    bundle = _tiny_bundle()
    cfg = ModelConfig(name="t", img_size=16, num_classes=4, num_experts=2, moe_blocks=1, **TINY)
    tcfg = TrainConfig(model=cfg, epochs=1, batch_size=16, log_every=1, ema_decay=0.0, aux_weight=0.25)
    s = fit(tcfg, bundle, tmp_path / "e2e", quiet=True)
    for rec in (json.loads(l) for l in (tmp_path / "e2e" / "metrics.jsonl").read_text().splitlines()):
        if rec["kind"] == "step":
            assert rec["loss"] == pytest.approx(rec["loss_cls"] + 0.25 * rec["loss_aux"], rel=1e-5)
    assert (s["expert_usage_unit"], sum(s["expert_counts"]), s["expert_usage"]) == ("images", 16, None)
    p = torch.tensor(s["expert_counts"], dtype=torch.float64) / 16
    assert s["expert_entropy"] == pytest.approx(float(-(p[p > 0] * p[p > 0].log()).sum()))
    assert s["expert_entropy_max"] == pytest.approx(math.log(2))
    sc = {"num_superclasses": 2, "class_to_superclass": bundle.planted_superclasses, "names": ["a", "b"]}
    fit(tcfg, bundle, tmp_path / "sc", superclasses=sc, quiet=True)
    for rec in (json.loads(l) for l in (tmp_path / "sc" / "metrics.jsonl").read_text().splitlines()):
        if rec["kind"] == "step":
            assert rec["loss"] == pytest.approx(rec["loss_cls"] + 0.3 * rec["loss_router"], rel=1e-5)
            assert rec["loss_aux"] > 0  # logged only


def test_token_run_records_tokens_per_expert(tmp_path):
    bundle = _tiny_bundle()
    cfg = ModelConfig(name="t", img_size=16, num_classes=4, num_experts=2, moe_blocks=1, routing="token", **TINY)
    s = fit(TrainConfig(model=cfg, epochs=1, batch_size=16, ema_decay=0.0), bundle, tmp_path, quiet=True)
    # summary.json names its checkpoint by sha256 (what `mvmoe report` matches latency files by)
    assert s["checkpoint_sha256"] == hashlib.sha256((tmp_path / "model.pt").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "summary.json").read_text())["checkpoint_sha256"] == s["checkpoint_sha256"]
    # 16 val images x 17 tokens x 1 MoE block, k=1: kept + dropped token choices = 272
    kept = sum(s["expert_counts"])
    assert s["expert_usage_unit"] == "tokens" and 0 < kept <= 272
    assert s["token_drop_fraction"] == pytest.approx(1 - kept / 272)


def test_distillation_loss_by_hand():
    from mobile_vmoe.train.losses import Distill, distillation_loss

    s = torch.tensor([[0.0, math.log(3.0)]])  # student softmax [0.25, 0.75]
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher softmax [0.75, 0.25]
    # soft, tau 1: KL(q || p) = 0.75 ln(0.75 / 0.25) + 0.25 ln(0.25 / 0.75) = 0.5 ln 3
    assert float(distillation_loss(s, t, "soft", 1.0)) == pytest.approx(0.5 * math.log(3.0))
    # tau 2: softmax of halved logits, p = [1, sqrt 3] / (1 + sqrt 3), q reversed; times tau^2 = 4
    r3 = math.sqrt(3.0)
    p, q = [1 / (1 + r3), r3 / (1 + r3)], [r3 / (1 + r3), 1 / (1 + r3)]
    want = 4 * sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert float(distillation_loss(s, t, "soft", 2.0)) == pytest.approx(want)
    assert float(distillation_loss(s, t, "hard", 1.0)) == pytest.approx(math.log(4.0))  # CE on the teacher's class 0
    parts = mvmoe_loss(s, None, None, torch.tensor([[0.0, 1.0]]), None, label_smoothing=0.0, router_weight=0.3,
                       aux_weight=0.0, distill=Distill(t, "soft", 0.25, 1.0))
    cls = -math.log(0.75)
    assert float(parts.total) == pytest.approx(0.75 * cls + 0.25 * 0.5 * math.log(3.0))


def test_training_with_a_teacher(tmp_path):
    """A dense teacher trained here, then a per-image MoE student: the logged loss obeys
    (1 - w) CE + w KL + 0.3 router CE, the teacher stays frozen, the summary names it, resume
    continues with it and refuses a changed one."""
    import shutil

    from mobile_vmoe.checkpoint import load_checkpoint
    from mobile_vmoe.train import resume

    small = {"depth": 2, "width": 32, "heads": 2, "img_size": 16, "batch_size": 16, "log_every": 1}
    tcfg, bundle = resolve("vit-6x64-p32", "synthetic:4:2", small, epochs=1)
    train(tcfg, bundle, tmp_path / "teacher", quiet=True)
    teacher = tmp_path / "teacher" / "model.pt"
    before = load_checkpoint(teacher)["model"]
    settings = {**small, "num_experts": 2, "moe_blocks": 1, "teacher": str(teacher), "distill_weight": 0.4,
                "stop_after_steps": 3}
    tcfg, bundle = resolve("vmoe-6x64-p32", "synthetic:4:2", settings, epochs=1)
    stopped = train(tcfg, bundle, tmp_path / "student", superclasses="none", quiet=True)
    assert stopped["stopped"]
    s = resume(tmp_path / "student", quiet=True)
    assert s["teacher"]["checkpoint"] == str(teacher.resolve()) and len(s["teacher"]["sha256"]) == 64
    rows = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and len(steps) > 3
    for r in steps:  # no superclasses: + aux_weight (0.01) x balancing
        assert r["loss"] == pytest.approx(0.6 * r["loss_cls"] + 0.4 * r["loss_distill"] + 0.01 * r["loss_aux"], rel=1e-5)
    after = load_checkpoint(teacher)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the file is untouched...
    # ... and a changed teacher stops a resume
    shutil.copy(tmp_path / "student" / "model.pt", tmp_path / "student2.pt")
    tcfg, bundle = resolve("vmoe-6x64-p32", "synthetic:4:2", settings, epochs=1)
    train(tcfg, bundle, tmp_path / "again", superclasses="none", quiet=True)
    shutil.copy(tmp_path / "student2.pt", teacher)
    with pytest.raises(MvmoeError, match="teacher .* changed"):
        resume(tmp_path / "again", quiet=True)


def test_teacher_for_other_data_is_refused_before_training(tmp_path):
    small = {"depth": 2, "width": 32, "heads": 2, "img_size": 16, "batch_size": 16}
    tcfg, bundle = resolve("vit-6x64-p32", "synthetic:4:2", small, epochs=1)
    train(tcfg, bundle, tmp_path / "teacher", quiet=True)
    tcfg, bundle = resolve("vit-6x64-p32", "synthetic:6:2", {**small, "teacher": str(tmp_path / "teacher" / "model.pt")},
                           epochs=1)
    with pytest.raises(MvmoeError, match="other classes"):
        train(tcfg, bundle, tmp_path / "student", superclasses="none", quiet=True)
    assert not (tmp_path / "student").exists()


def test_torchvision_teacher_round_trip_and_refusal(tmp_path):
    import torchvision

    from mobile_vmoe.train.distill import load_teacher, save_torchvision_teacher

    bundle = _tiny_bundle()
    net = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    path = save_torchvision_teacher(tmp_path / "t.pt", net, "mobilenet_v3_small", bundle, top1=50.0)
    teacher, info = load_teacher(path, bundle)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(teacher(x), net(x)) and (info["model"], info["top1"]) == ("mobilenet_v3_small", 50.0)
    other = build_synthetic(6, 2, 16, train_per_class=4, val_per_class=1, seed=0)
    with pytest.raises(MvmoeError, match="other classes"):
        load_teacher(path, other)
