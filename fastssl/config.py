"""The training config: YAML (+ ``dotted.key=value`` overrides) → a typed, validated ``TrainConfig``.

Each layer owns the model of its section (``fastssl.data.config.DataConfig`` for ``data:``, the
method configs in ``fastssl.methods``); this file composes them and checks what only the whole can
check (e.g. the patch size must divide the image size). Every field has a documented default, so a
config only states what differs. Unknown keys are errors, not silently ignored typos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from fastssl.config_base import ConfigError, Section  # ConfigError: fastssl.config.ConfigError for callers
from fastssl.config_deepspeed import check_batch_keys, warn_unknown
from fastssl.config_pairs import problem as two_key_problem
from fastssl.config_paths import output_dir_problem, overlap_problem, resume_problem
from fastssl.data.config import DataConfig
from fastssl.methods.registry import method_config_union, method_names
from fastssl.methods.simclr import SimCLRConfig
from fastssl.models.vit.attention import BackendName  # the names the dispatcher takes, every one forceable


class RunConfig(Section):
    output_dir: Path = Field(Path("runs/default"), description="Checkpoints, logs, metrics, exported encoder and resolved configs go here.")
    seed: int = Field(0, description="Seed of model init, data order and augmentation (offset by rank where it must differ).")
    resume: Union[Literal["auto", "never"], Path] = Field(
        "auto", description="auto: continue from the latest checkpoint in output_dir if any; never: start fresh; or a checkpoint folder."
    )

    @model_validator(mode="after")
    def _usable_paths(self) -> "RunConfig":
        problem = output_dir_problem(self.output_dir) or resume_problem(self.resume)
        if problem:
            raise ValueError(problem)
        return self


class ModelConfig(Section):
    arch: str = Field("vit_tiny_patch16_224", description="timm model name: a ViT (vit_tiny_patch16_224 ... vit_large_patch16_224) or a ResNet (resnet18, resnet50, ...).")
    img_size: int | None = Field(None, description="Input resolution; None takes data.image_size.")
    patch_size: int = Field(4, ge=1, description="ViT patch size (overrides the one in the timm name); ResNets ignore it.")
    small_stem: bool = Field(False, description="ResNet only: 3×3 stride-1 stem conv and no max-pool, for 28–32 px images.")
    freeze_patch_embed: bool = Field(False, description="ViT only: keep the random patch projection fixed (MoCo v3's stability trick).")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Stochastic depth rate.")
    attn_backend: BackendName = Field(
        "auto", description="Packed-attention backend of the ViT (auto: chosen per device, see fastssl/models/vit/attention.py)."
    )

    @field_validator("arch")
    @classmethod
    def _known_to_timm(cls, arch: str) -> str:
        import fastssl  # noqa: F401  (torchvision shim before timm)
        import timm

        from fastssl.models.encoder import encoder_family

        # test_vit* / test_resnet are timm's tiny models for tests and smoke runs.
        if arch.startswith(("vit_", "test_vit")) and arch not in timm.list_models(arch):
            raise ValueError(f"{arch!r} is not a timm ViT (e.g. vit_tiny_patch16_224 ... vit_large_patch16_224)")
        encoder_family(arch)  # one-line error for any other family
        if arch not in timm.list_models(arch):
            raise ValueError(f"{arch!r} is not a timm ResNet (e.g. resnet18, resnet50)")
        return arch

    @model_validator(mode="after")
    def _vit_only_options(self) -> "ModelConfig":
        from fastssl.models.encoder import encoder_family

        if self.freeze_patch_embed and encoder_family(self.arch) == "resnet":
            raise ValueError("model.freeze_patch_embed is for ViTs; a ResNet has no patch projection")
        return self

    @model_validator(mode="after")
    def _stem_of_a_resnet(self) -> "ModelConfig":
        from fastssl.models.encoder import encoder_family

        if self.small_stem and encoder_family(self.arch) != "resnet":
            raise ValueError(f"model.small_stem applies to ResNets only, not {self.arch!r}")
        return self


class OptimConfig(Section):
    epochs: int = Field(100, ge=1, description="Training epochs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (schedules are laid out over this many). None: epochs × steps per epoch.")
    batch_size: int = Field(256, ge=1, description="Micro-batch per rank (images, each giving two views).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    base_lr: float = Field(1e-3, gt=0, description="Learning rate for a global batch of 256; actual lr = base_lr × global_batch / 256.")
    min_lr_ratio: float = Field(1e-3, ge=0, le=1, description="Cosine decay ends at min_lr_ratio × lr.")
    warmup_epochs: float = Field(10.0, ge=0, description="Linear warm-up, per iteration, over this many epochs.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay; norms, biases, cls/pos tokens get none.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    clip_grad: float | None = Field(3.0, gt=0, description="Global gradient-norm clipping; None disables.")

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW betas must each be in [0, 1), e.g. [0.9, 0.999]; got {list(betas)}")
        return betas

    @model_validator(mode="after")
    def _representable_lr(self) -> "OptimConfig":
        # The peak LR (base_lr × global batch / 256, global batch >= batch_size × grad_accum) lives in
        # float32 optimizer state; beyond float32's range every update is inf.
        peak = self.base_lr * self.batch_size * self.grad_accum / 256
        if not (self.base_lr < 3.4e38 and peak < 3.4e38):
            raise ValueError(f"base_lr={self.base_lr:g} gives a peak learning rate beyond float32's range; "
                             "typical values are 1e-4 ... 1e-2")
        return self


class EngineConfig(Section):
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU.")
    amp: Literal["auto", "autocast", "deepspeed"] = Field(
        "auto", description="How bf16 runs: autocast (fp32 weights, torch.autocast, torch's AdamW stepped as it is) or "
        "deepspeed (a bf16 model, fp32 master weights in DeepSpeed's optimizer wrapper); auto: autocast at ZeRO 0 on CUDA "
        "(fastssl/engine/amp.py).")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage.")
    log_every_steps: int = Field(10, ge=1, description="Metrics to TensorBoard / metrics.jsonl every N optimizer steps.")
    ckpt_every_steps: int = Field(500, ge=1, description="Checkpoint every N optimizer steps (and always at the end and on SIGTERM).")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    progress: bool = Field(True, description="Show a progress bar (rank 0).")
    compile: bool = Field(False, description="torch.compile the encoder blocks and heads in place (fastssl/engine/compile.py; notes/engine.md).")
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode when engine.compile is on (max-autotune-no-cudagraphs: slower compile, tuned GPU kernels).")
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="ResNet encoders only: convolution weights and inputs in channels-last (NHWC) memory layout, the "
        "one cuDNN's bf16 tensor-core kernels take without transposes; auto: on for a ResNet on CUDA, off on CPU "
        "(fastssl/engine/layout.py).")


class KnnPoint(Section):
    k: int = Field(ge=1)
    temperature: float = Field(gt=0)


class EvalConfig(Section):
    enabled: bool = Field(True, description="False: no kNN and no linear probe at all (speed runs, data.synthetic=true).")
    knn_every_epochs: int = Field(0, ge=0, description="kNN every N epochs (0: only at the end).")
    knn_at_init: bool = Field(True, description="Also evaluate the randomly initialised encoder before training.")
    knn_k: int = Field(200, ge=1, description="kNN neighbours (the headline number).")
    knn_temperature: float = Field(0.1, gt=0, description="kNN vote temperature.")
    knn_extra: list[KnnPoint] = Field(default_factory=lambda: [KnnPoint(k=20, temperature=0.07)], description="Further (k, T) pairs reported.")
    train_samples: int | None = Field(None, ge=1, description="kNN memory bank: a fixed subset of the train split (None: all).")
    test_samples: int | None = Field(None, ge=1, description="kNN queries: a fixed subset of the test split (None: all).")
    batch_size: int = Field(256, ge=1, description="Per-rank batch size for feature extraction.")
    linear_probe: bool = Field(True, description="Also fit a linear probe (L-BFGS logistic regression) on the cached features.")
    probe_weight_decay: float = Field(1e-4, ge=0, description="L2 penalty of the linear probe (on standardised features).")


MethodConfig = method_config_union()


class TrainConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=SimCLRConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="Extra DeepSpeed config keys, merged over the derived ones.")

    @model_validator(mode="before")
    @classmethod
    def _default_method_name(cls, data: Any) -> Any:
        # The method section picks its schema by ``name``; simclr is the documented default.
        if isinstance(data, dict) and isinstance(data.get("method"), dict):
            method = {"name": "simclr", **data["method"]}
            if method["name"] not in method_names():
                raise ValueError(f"method.name: unknown method {method['name']!r} (one of {', '.join(method_names())})")
            data = {**data, "method": method}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        from fastssl.models.encoder import encoder_family

        overlap = None if self.data.synthetic else overlap_problem(self.run.output_dir, self.data.root)
        if overlap:  # (synthetic batches read no data.root)
            raise ValueError(overlap)
        img = self.model.img_size or self.data.image_size
        if encoder_family(self.model.arch) == "vit" and img % self.model.patch_size:
            raise ValueError(f"model.patch_size={self.model.patch_size} must divide the image size {img}")
        if self.engine.precision == "fp16" and self.engine.zero_stage == 0:
            # DeepSpeed's fp16 path needs its loss-scaling optimizer wrapper, which ZeRO provides.
            raise ValueError("engine.precision=fp16 needs engine.zero_stage >= 1 (or use bf16)")
        if self.engine.precision == "fp16" and self.engine.amp == "autocast":
            raise ValueError("engine.amp=autocast runs bf16 only; fp16 needs engine.amp=deepspeed (its loss scaling)")
        if self.eval.train_samples is not None and self.eval.train_samples < self.eval.knn_k:
            raise ValueError(f"eval.train_samples={self.eval.train_samples} is smaller than eval.knn_k={self.eval.knn_k}")
        _synthetic_needs_no_eval(self)
        two_keys = two_key_problem(self)  # mask ratio / chunks against the patch grid, batch against the method, warm-up
        if two_keys:
            raise ValueError(two_keys)
        if self.deepspeed:
            check_batch_keys(self.deepspeed, micro=self.optim.batch_size, accum=self.optim.grad_accum, world=None)
            warn_unknown(self.deepspeed)
        return self


def _synthetic_needs_no_eval(cfg: "TrainConfig") -> None:
    """data.synthetic: the batches carry no labels, so the kNN / linear probe would score noise."""
    if cfg.data.synthetic and cfg.eval.enabled:
        raise ValueError("data.synthetic=true makes batches without real labels, so the kNN / linear probe "
                         "evaluation cannot run: add eval.enabled=false")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        if node.get(key) is None:  # absent, or a section written with nothing under it (`optim:`)
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[keys[-1]] = value


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    if len(loc) > 2 and loc[0] == "method":
        del loc[1]  # the discriminator's tag (e.g. "simclr") is not a key the user wrote
    where = ".".join(loc)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or first["type"] == "extra_forbidden" or got is None else f" (got {got!r})"
    extra = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {msg}{shown}{extra}" if where else f"{msg}{extra}"


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one section (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """``<file> line L, column C: <what is wrong>`` (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    what = " ".join(str(x) for x in (getattr(err, "context", None), getattr(err, "problem", None)) if x) or str(err).splitlines()[0]
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{path}{where}: not valid YAML ({what})"


def read_config_tree(path: str | Path) -> dict:
    """The YAML mapping of a config file; ConfigError (one line naming the file, and the line) otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file (e.g. configs/fmnist/simclr.yaml)")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a YAML config") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror})") from None
    try:
        tree = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    if tree is None:
        # The defaults describe a full-size job (Fashion-MNIST prepared, 100 epochs): an empty file
        # is far more likely a mistake than a request for it.
        raise ConfigError(f"{path} holds no settings (it is empty or only comments); a config states at least the "
                          "sections it changes (see configs/); to run every default on purpose write `run: {}`")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, data:, model:, ...), "
                          f"not a {type(tree).__name__}")
    return tree


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read YAML, apply ``a.b.c=value`` overrides (values parsed as YAML), validate.

    Raises ConfigError with a single line naming the offending key, override or path (and the line
    of a YAML syntax error). An empty or comment-only file is refused, as is a key given twice.
    """
    tree = read_config_tree(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                              "quote it or fix the brackets") from None
        _set_dotted(tree, key.strip(), value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def dump_config(cfg: TrainConfig) -> str:
    """The fully resolved config as YAML (every default spelled out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
