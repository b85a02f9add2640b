"""Model configuration: one dataclass, validated on construction.

Every field can be overridden from the command line with ``--set KEY=VALUE``; ``parse_overrides``
turns those strings into typed values and ``ModelConfig.replace`` applies them with validation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import MvmoeError, did_you_mean

ROUTINGS = ("image", "token")
DISPATCHES = ("auto", "gather", "dense", "grouped")
ROUTER_INPUTS = ("cls", "mean")
GATES = ("prob", "unit")


@dataclass(frozen=True)
class ModelConfig:
    """A ViT, optionally with mixture-of-experts MLPs in its last ``moe_blocks`` blocks.

    num_experts == 0 gives a dense ViT. With routing == "image" (Mobile V-MoE) one router runs once
    per image on the representation after the last dense block and every MoE block uses its top-k
    choice. With routing == "token" (V-MoE, Riquelme et al. 2021) each MoE block routes every token
    on its own, with an expert capacity and batch-priority routing.
    """

    name: str = "custom"
    img_size: int = 224
    patch_size: int = 32
    in_chans: int = 3
    num_classes: int = 1000
    depth: int = 12
    width: int = 192
    heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True  # bias on the qkv projection; only when ``bias`` is True as well
    # --- ViT-22B options (Dehghani et al. 2023) ---
    qk_norm: bool = False  # LayerNorm over head_dim on queries and keys, per head
    parallel_block: bool = False  # x + attn(norm(x)) + mlp(norm(x)) with one shared norm
    bias: bool = True  # False: no bias in qkv, attention proj, MLP / expert linears and the transformer LayerNorms
    drop_path: float = 0.0  # stochastic depth rate at the last block (linearly increasing)
    dropout: float = 0.0  # dropout before the head
    # --- mixture of experts ---
    num_experts: int = 0  # 0 = dense
    top_k: int = 1
    moe_blocks: int = 2  # the last N blocks have MoE MLPs
    expert_mlp_ratio: float = 0.0  # hidden size of one expert / width; 0 = same as mlp_ratio
    routing: str = "image"  # image | token
    router_input: str = "cls"  # per-image router reads the class token or the mean patch token
    dispatch: str = "auto"  # auto | gather | dense | grouped (see models/dispatch.py)
    # read by nothing (the router has one output per expert, and training needs one superclass per
    # expert); kept so that configs that set it still load
    num_superclasses: int = 0
    # prob: a k=1 gate is the router's probability (V-MoE, Switch); unit: the chosen gates sum to 1
    # for every k (k=1: value 1, gradient of log p), so an upcycled MoE starts as its dense model
    gate: str = "prob"
    # per-token (V-MoE) routing only
    capacity_ratio: float = 1.05  # expert buffer = ceil(ratio * k * group tokens / E) per group
    eval_capacity_ratio: float = 0.0  # the ratio in eval mode (0 = capacity_ratio): V-MoE's compute/accuracy knob
    token_group_size: int = 0  # images whose tokens share the expert buffers (0 = the whole batch)
    batch_priority: bool = True  # fill buffers in order of router confidence (BPR)
    router_noise: float = 1.0  # std of routing noise = router_noise / E during training

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise MvmoeError("invalid model config: " + "; ".join(errors))

    # ------------------------------------------------------------------ checks
    def problems(self) -> list[str]:
        p: list[str] = []
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "depth", "width", "heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                p.append(f"{name}={v!r} must be a positive integer")
        if p:
            return p
        if self.width % self.heads:
            p.append(f"width={self.width} is not divisible by heads={self.heads}")
        if self.img_size % self.patch_size:
            p.append(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}")
        if self.mlp_ratio <= 0:
            p.append(f"mlp_ratio={self.mlp_ratio} must be > 0")
        if not 0.0 <= self.drop_path < 1.0:
            p.append(f"drop_path={self.drop_path} must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout={self.dropout} must be in [0, 1)")
        for name in ("qkv_bias", "qk_norm", "parallel_block", "bias"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{name}={getattr(self, name)!r} must be true or false")
        if self.routing not in ROUTINGS:
            p.append(f"routing={self.routing!r} must be one of {ROUTINGS}")
        if self.dispatch not in DISPATCHES:
            p.append(f"dispatch={self.dispatch!r} must be one of {DISPATCHES}")
        if self.gate not in GATES:
            p.append(f"gate={self.gate!r} must be one of {GATES}")
        if self.router_input not in ROUTER_INPUTS:
            p.append(f"router_input={self.router_input!r} must be one of {ROUTER_INPUTS}")
        if self.num_experts < 0 or self.num_experts == 1:
            p.append(f"num_experts={self.num_experts} must be 0 (dense) or at least 2")
        if self.num_experts:
            if not 1 <= self.top_k <= self.num_experts:
                p.append(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
            if not 1 <= self.moe_blocks <= self.depth:
                p.append(f"moe_blocks={self.moe_blocks} must be between 1 and depth={self.depth}")
            if self.routing == "image" and self.moe_blocks == self.depth:
                p.append(
                    f"moe_blocks={self.moe_blocks} equals depth={self.depth}: per-image routing "
                    "needs at least one dense block before the router"
                )
            if self.expert_mlp_ratio < 0:
                p.append(f"expert_mlp_ratio={self.expert_mlp_ratio} must be >= 0")
            if self.num_superclasses < 0:
                p.append(f"num_superclasses={self.num_superclasses} must be >= 0")
            if self.capacity_ratio <= 0:
                p.append(f"capacity_ratio={self.capacity_ratio} must be > 0")
            if self.eval_capacity_ratio < 0:
                p.append(f"eval_capacity_ratio={self.eval_capacity_ratio} must be >= 0")
            if self.token_group_size < 0:
                p.append(f"token_group_size={self.token_group_size} must be >= 0")
            if self.router_noise < 0:
                p.append(f"router_noise={self.router_noise} must be >= 0")
        return p

    # ------------------------------------------------------------ derived values
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_per_image(self) -> bool:
        """A Mobile V-MoE: one router per image whose choice every MoE block uses."""
        return self.is_moe and self.routing == "image"

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.grid**2 + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def use_qkv_bias(self) -> bool:
        """The qkv projection has a bias only if both ``bias`` and ``qkv_bias`` are on."""
        return self.bias and self.qkv_bias

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def expert_hidden(self) -> int:
        return int(self.width * (self.expert_mlp_ratio or self.mlp_ratio))

    @property
    def first_moe_block(self) -> int:
        """Index of the first MoE block (== depth for a dense model)."""
        return self.depth - self.moe_blocks if self.is_moe else self.depth

    def is_moe_block(self, i: int) -> bool:
        return self.is_moe and i >= self.first_moe_block

    def expert_capacity(self, tokens: int | None = None) -> int:
        """Per-token routing: buffer slots per expert per image, ceil(ratio * k * T / E)."""
        t = self.num_tokens if tokens is None else tokens
        return expert_capacity(t, self.top_k, self.num_experts, self.capacity_ratio)

    # ------------------------------------------------------------- conversion
    def replace(self, **changes: Any) -> "ModelConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise MvmoeError(f"unknown model config key(s): {', '.join(unknown)}; known: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = set(field_names())
        unknown = sorted(set(d) - known)
        if unknown:
            raise MvmoeError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


def expert_capacity(tokens: int, k: int, num_experts: int, ratio: float) -> int:
    """Slots per expert for ``tokens`` tokens routed top-``k``: ceil(ratio * k * tokens / E), at least 1.

    E.g. 17 tokens, k 1, E 4, ratio 1.05: ceil(4.4625) = 5.
    """
    return max(1, math.ceil(ratio * k * tokens / num_experts))


def _coerce(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise MvmoeError(f"--set {key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise MvmoeError(f"--set {key}={text}: expected {kind.__name__}") from None


def _field_types(cls: type) -> dict[str, type]:
    pytypes = {"int": int, "float": float, "str": str, "bool": bool}
    out = {}
    for f in dataclasses.fields(cls):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        if name in pytypes:  # TrainConfig.model (a ModelConfig) is not a --set key
            out[f.name] = pytypes[name]
    return out


def parse_overrides(items: list[str] | None, cls: type | None = None) -> dict[str, Any]:
    """Turn ``["depth=6", "lr=1e-3"]`` into typed ``{"depth": 6, "lr": 0.001}``.

    Keys are ModelConfig or TrainConfig fields (the two share no names); ``cls`` restricts them to
    one of the two. Unknown keys, missing ``=`` and values of the wrong type raise MvmoeError.
    """
    types = _field_types(cls) if cls is not None else {**_field_types(ModelConfig), **_field_types(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise MvmoeError(f"--set {item!r}: expected KEY=VALUE")
        key, text = (part.strip() for part in item.split("=", 1))
        if key not in types:
            raise MvmoeError(f"--set {key}: unknown key{did_you_mean(key, types)}; model keys: {', '.join(field_names())}"
                             + (f"; train keys: {', '.join(train_field_names())}" if cls is not ModelConfig else ""))
        out[key] = _coerce(key, text, types[key])
    return out


__all__ = ["ModelConfig", "parse_overrides", "field_names", "field", "ROUTINGS", "DISPATCHES"]


# ====================================================================== training settings
AMP_MODES = ("auto", "bf16", "fp16", "none")
LOADERS = ("auto", "torch", "dali")
AUGMENTS = ("none", "light", "default", "deit")  # built by mobile_vmoe.data.transforms; "default" is per dataset
MOE_INITS = ("scratch", "upcycle")
DENSE_STAGES = ("train", "init")
LR_REFERENCE_BATCH = 512  # ``lr`` is stated for this many images per optimizer step


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; ``--set KEY=VALUE`` reaches these as well as ModelConfig's fields.

    The one config of a training run: ``model`` is the ModelConfig being trained, the rest are the
    training settings. The defaults suit the small embedded datasets (digits, synthetic) on a CPU;
    the named ImageNet recipes in ``mobile_vmoe/train/recipes.py`` set the DeiT values.
    ``batch_size`` is the GLOBAL batch of one forward/backward (split evenly over DDP processes);
    an optimizer step sees ``batch_size * grad_accum`` images. ``lr`` is the peak learning rate per
    512 images: the run uses ``lr * batch_size * grad_accum / 512`` (``effective_lr``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.048  # peak lr per 512 images (DeiT's convention): 3e-3 at the default batch of 32
    min_lr: float = 1e-5  # end of the cosine (absolute, not scaled with the batch)
    warmup_epochs: float = 2.0  # linear warmup, per step
    weight_decay: float = 0.05  # AdamW; not applied to norms, biases, position embedding, class token
    betas1: float = 0.9
    betas2: float = 0.999
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global grad norm; 0 = off
    ema_decay: float = 0.99  # EMA of the weights (0 = off); model.pt's "ema" holds them
    router_weight: float = 0.3  # loss = CE + router_weight * CE(router logits, superclass target)
    aux_weight: float = 0.01  # per-token routing: + aux_weight * (importance + load) losses
    mixup: float = 0.0  # MixUp alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    mix_prob: float = 1.0  # probability that a batch is mixed when mixup/cutmix is on
    augment: str = "default"  # none | light | default | deit (see mobile_vmoe/data/transforms.py)
    amp: str = "auto"  # auto (CUDA: bf16, or fp16 + GradScaler without bf16; CPU: fp32) | bf16 | fp16 | none
    grad_accum: int = 1  # micro-batches per optimizer step (gradients summed, loss scaled by 1/N)
    compile: bool = False  # torch.compile the model for training
    dist_timeout_min: float = 60.0  # process-group timeout (minutes): longer than the longest step or evaluation
    seed: int = 0
    workers: int = 0  # DataLoader workers per process
    loader: str = "auto"  # auto (DALI when installed and on CUDA, else torch) | torch | dali
    prefetch: int = 2  # batches each DataLoader worker keeps ready (torch) / queue depth (DALI)
    repeated_aug: int = 1  # repeated augmentation: each image N times per epoch on different ranks (DeiT: 3)
    threads: int = 0  # CPU: torch intra-op threads (0 = torch's default); 1 is robust on busy machines
    dense_epochs: int = 0  # --superclasses auto: epochs of the dense stage (0 = same as epochs)
    superclass_holdout: float = 0.1  # --superclasses auto: stratified share of train the confusion is fit on
    superclass_clustering: str = "balanced"  # balanced (equal-size superclasses) | spectral
    superclass_confusion: str = "counts"  # counts (argmax per image) | soft (mean softmax mass per class)
    teacher: str = ""  # a checkpoint this project wrote: distill from it (--teacher); "" = no teacher
    init: str = ""  # weights to start from (--init): an mvmoe checkpoint or a timm / torchvision ViT state dict
    moe_init: str = "scratch"  # scratch (from --init when given, else random) | upcycle (experts = the dense stage's MLP)
    dense_stage: str = "train"  # --superclasses auto: train the dense twin | init (the --init weights are the dense stage)
    class_names: str = ""  # ImageFolder: a file with one human name per class folder (--class-names); "" = found or none
    distill: str = "soft"  # soft (KL at distill_tau) | hard (CE on the teacher's argmax, DeiT)
    distill_weight: float = 0.5  # loss = (1 - w) CE + w distillation
    distill_tau: float = 1.0  # soft distillation temperature
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    log_every: int = 10  # steps between "step" lines in metrics.jsonl
    stop_after_steps: int = 0  # save last.pt and stop after N steps of this invocation (0 = off)

    def __post_init__(self) -> None:
        errors = self.problems()
        if errors:
            raise MvmoeError("invalid train config: " + "; ".join(errors))

    def problems(self) -> list[str]:
        p: list[str] = []
        if not isinstance(self.model, ModelConfig):
            p.append(f"model={self.model!r} must be a ModelConfig")
        for name in ("epochs", "batch_size", "grad_accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                p.append(f"{name}={v!r} must be a positive integer")
        for name in ("workers", "threads", "dense_epochs", "stop_after_steps", "seed"):
            if getattr(self, name) < 0:
                p.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.eval_every < 1 or self.log_every < 1:
            p.append(f"eval_every={self.eval_every} and log_every={self.log_every} must be >= 1")
        if not 0 < self.lr < float("inf"):
            p.append(f"lr={self.lr} must be a finite number > 0")
        elif self.batch_size_ok() and not 0 <= self.min_lr <= self.effective_lr:
            p.append(f"min_lr={self.min_lr} must be in [0, the effective lr {self.effective_lr:g}] "
                     f"(lr={self.lr} per 512 images at a global batch of {self.global_batch})")
        for name in ("warmup_epochs", "weight_decay", "clip_grad", "router_weight", "aux_weight", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                p.append(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("label_smoothing", "ema_decay", "betas1", "betas2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 <= self.mix_prob <= 1.0:
            p.append(f"mix_prob={self.mix_prob} must be in [0, 1]")
        if not self.dist_timeout_min > 0:
            p.append(f"dist_timeout_min={self.dist_timeout_min} must be > 0")
        if self.amp not in AMP_MODES:
            p.append(f"amp={self.amp!r} must be one of {AMP_MODES}")
        if self.loader not in LOADERS:
            p.append(f"loader={self.loader!r} must be one of {', '.join(LOADERS)}")
        for name in ("prefetch", "repeated_aug"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if not 0.0 < self.superclass_holdout < 1.0:
            p.append(f"superclass_holdout={self.superclass_holdout} must be in (0, 1)")
        if self.superclass_clustering not in ("balanced", "spectral"):
            p.append(f"superclass_clustering={self.superclass_clustering!r} must be balanced or spectral")
        if self.superclass_confusion not in ("counts", "soft"):
            p.append(f"superclass_confusion={self.superclass_confusion!r} must be counts or soft")
        if self.moe_init not in MOE_INITS:
            p.append(f"moe_init={self.moe_init!r} must be one of {', '.join(MOE_INITS)}")
        if self.dense_stage not in DENSE_STAGES:
            p.append(f"dense_stage={self.dense_stage!r} must be one of {', '.join(DENSE_STAGES)}")
        if self.distill not in ("soft", "hard"):
            p.append(f"distill={self.distill!r} must be soft or hard")
        if not 0.0 <= self.distill_weight <= 1.0:
            p.append(f"distill_weight={self.distill_weight} must be in [0, 1]")
        if not self.distill_tau > 0:
            p.append(f"distill_tau={self.distill_tau} must be > 0")
        if self.augment not in AUGMENTS:
            p.append(f"augment={self.augment!r} must be one of {', '.join(AUGMENTS)}")
        return p

    def batch_size_ok(self) -> bool:
        return all(isinstance(v, int) and v > 0 for v in (self.batch_size, self.grad_accum))

    @property
    def global_batch(self) -> int:
        """Images per optimizer step, over all processes: batch_size (already global) x grad_accum."""
        return self.batch_size * self.grad_accum

    @property
    def effective_lr(self) -> float:
        """The peak lr the optimizer uses: ``lr`` (per 512 images) scaled linearly to ``global_batch``.

        E.g. lr 5e-4, batch_size 1024, grad_accum 2: 5e-4 * 2048 / 512 = 2e-3."""
        return self.lr * (self.global_batch / LR_REFERENCE_BATCH)

    def replace(self, **changes: Any) -> "TrainConfig":
        unknown = sorted(set(changes) - {"model", *train_field_names()})
        if unknown:
            raise MvmoeError(f"unknown train config key(s): {', '.join(unknown)}; known: {', '.join(train_field_names())}")
        return dataclasses.replace(self, **changes)

    def with_settings(self, settings: dict[str, Any]) -> "TrainConfig":
        """Apply ``--set`` values (see ``parse_overrides``): model keys go to ``model``, the rest here."""
        model_keys = set(field_names())
        unknown = sorted(set(settings) - model_keys - set(train_field_names()))
        if unknown:
            raise MvmoeError(f"unknown setting(s): {', '.join(unknown)}{did_you_mean(unknown[0], [*model_keys, *train_field_names()])}; model keys: {', '.join(field_names())}; "
                             f"train keys: {', '.join(train_field_names())}")
        model = {k: v for k, v in settings.items() if k in model_keys}
        train = {k: v for k, v in settings.items() if k not in model_keys}
        return self.replace(model=self.model.replace(**model) if model else self.model, **train)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the training settings plus ``"model"``: ModelConfig.to_dict()."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        model = ModelConfig.from_dict(d.pop("model")) if "model" in d else ModelConfig()
        return cls(model=model).replace(**d)


def train_field_names() -> list[str]:
    """The TrainConfig keys ``--set`` accepts (every field but ``model``)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]


__all__ += ["TrainConfig", "train_field_names", "AMP_MODES", "LR_REFERENCE_BATCH"]
