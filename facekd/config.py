"""Typed experiment configuration loaded from YAML.

The dataclasses below are the one source of every default.  A config file may name base files
with ``_base_`` (paths relative to the file); the file's keys are deep-merged over its bases, as
in insightface's arcface_torch ``configs/`` (one base plus short per-experiment deltas)::

    # configs/experiments/cpu_scale/student_hinton.yaml
    _base_: base.yaml            # the family base: configs/experiments/cpu_scale/base.yaml
    losses:
      - {name: arcface, weight: 1.0, scale: 32.0, margin: 0.3}
      - {name: hinton_kd, weight: 1.0, temperature: 4.0}

A file that sets neither ``name`` nor ``output_dir`` gets them from its path (here
``cpu_scale/student_hinton`` and ``runs/cpu_scale/student_hinton``:
:func:`facekd.config_files.derived_run`).  Reading files, ``_base_`` chains and ``--set`` live
in :mod:`facekd.config_files`; :func:`to_yaml` writes a resolved config back (``facekd config``
prints it, every training run saves it as ``config.yaml`` beside its checkpoints).

Command lines override single keys with ``--set train.epochs=2`` (the value is parsed
as YAML, list items are addressed by index: ``--set losses.1.weight=0.5``).  Every key
is checked against the dataclasses below: an unknown key, a value of the wrong type, a number
outside the range its field declares (:func:`bounded`, beside the field's type and default; NaN
and infinity are never accepted) or values that contradict each other (:func:`check_consistency`)
raise :class:`~facekd.errors.ConfigError` naming the dotted key, the value and the file or
``--set`` it came from (:class:`Origins`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

# CONFIG_DIR, Origins, apply_override, load_yaml_with_bases, resolve_config_path: re-exported
from facekd.config_files import (CONFIG_DIR, Origins, apply_override, deep_merge, derived_run,  # noqa: F401
                                 load_yaml_with_bases, resolve_config_path)
from facekd.config_ranges import RANGE, Range, bounded  # noqa: F401  (Range: re-exported)
from facekd.errors import ConfigError

#: the smallest ``model.input_size``: the backbones (MobileFaceNet, IResNet) halve the map with four
#: stride-2 layers.  Both run, forward and backward, at any side down to 1 px (tried: 1, 2, 3, 4, 7,
#: 8, 15, 16); below 16 px the last stride-2 layers see a map of one or two pixels and the final
#: 1x1 map no longer covers a 16x16 patch of the face, so such a run trains without a word on
#: what is mostly padding.
MIN_INPUT_SIZE = 16
#: the largest image side a config may ask for (an IResNet's ``fc`` grows with its square:
#: 1024 px is 4 GB of weights already)
MAX_INPUT_SIZE = 1024
#: the largest embedding a config may ask for (insightface's models have 512)
MAX_EMBEDDING_SIZE = 8192
#: the most of anything a machine runs at once (loader workers, teacher threads)
MAX_WORKERS = 256


@dataclass
class ModelConfig:
    """A backbone from :data:`facekd.models.MODELS`."""
    name: str = "mobilefacenet"
    embedding_size: int = bounded(512, ge=1, le=MAX_EMBEDDING_SIZE)
    input_size: int = bounded(112, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)
    params: Dict[str, Any] = field(default_factory=dict)  # extra factory arguments


@dataclass
class DataConfig:
    """A training source from :data:`facekd.data.TRAIN_SOURCES`."""
    source: str = "synthetic"          # synthetic | folder | recordio
    root: Optional[str] = None         # identity-folder root or directory of train.rec/.idx
    num_identities: int = bounded(64, ge=1)          # synthetic only
    images_per_identity: int = bounded(16, ge=1)     # synthetic only
    seed: int = bounded(0, ge=0, le=2 ** 32 - 1)    # synthetic only
    input_size: int = bounded(112, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)
    skip_bad_images: bool = True       # skip (count, warn) unreadable training images
    num_workers: int = bounded(0, ge=0, le=MAX_WORKERS)   # 0: load in the training process
    # folders of aligned faces without identities: only the distillation losses see them
    # (train.unlabelled_per_batch of them beside each P x K batch); never a test set (LFW, CFP)
    unlabelled: List[str] = field(default_factory=list)
    # decode every training face once into one uint8 tensor on the training device and make each
    # batch's views there (facekd.training.device_views): for a GPU, whose step outruns loader workers
    on_device: bool = False


@dataclass
class ValSetConfig:
    """One verification set from :data:`facekd.data.PAIR_SOURCES`."""
    name: str = "synthetic"
    kind: str = "synthetic"            # lfw | bin | agedb | cfp_fp | cfp_ff | synthetic
    path: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ValConfig:
    """Periodic verification during training and best-checkpoint selection."""
    sets: List[ValSetConfig] = field(default_factory=lambda: [ValSetConfig()])
    every_epochs: int = bounded(1, ge=0)     # 0: never verify (no best.pt selection either)
    batch_size: int = bounded(64, ge=1)
    select_best_on: Optional[str] = None   # val-set name; default: the first set


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""
    optimizer: str = "sgd"             # sgd | adamw
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    scheduler: str = "cosine"          # cosine | step | constant
    warmup_epochs: float = bounded(0.0, ge=0)            # at most train.epochs
    milestones: List[float] = bounded(list, gt=0)       # epochs, for ``step`` (at most train.epochs)
    gamma: float = bounded(0.1, gt=0, le=1)
    min_lr: float = bounded(0.0, ge=0)                   # at most lr


@dataclass
class TrainConfig:
    """The training loop."""
    epochs: int = bounded(4, ge=1)
    identities_per_batch: int = bounded(16, ge=1)    # P of a P x K batch
    images_per_identity: int = bounded(4, ge=1)      # K (at most the images each identity has)
    amp: str = "none"                  # none | bf16 | fp16
    channels_last: bool = False
    grad_clip: float = bounded(5.0, ge=0)            # 0 disables
    # last.pt (and a step_<N>.pt) every N steps; 0: only at the end of each epoch
    checkpoint_every_steps: int = bounded(100, ge=0)
    log_every_steps: int = bounded(10, ge=1)
    max_steps_per_epoch: int = bounded(0, ge=0)      # 0 = the whole epoch
    progress: bool = True
    # added for facekd.training: random horizontal flip of training samples (the teacher
    # cache holds the embedding of each sample and of its mirror)
    flip: bool = True
    # added for facekd.training: step_<N>.pt checkpoints kept besides last.pt/best.pt (0: none)
    keep_step_checkpoints: int = bounded(2, ge=0)
    # added for issue 12 (training speed): torch.compile the training module
    compile: bool = False
    # torch.compile mode of train.compile: default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # unlabelled faces (data.unlabelled) added to each P x K batch
    unlabelled_per_batch: int = bounded(0, ge=0)
    # cuDNN autotuning (torch.backends.cudnn.benchmark) on CUDA
    cudnn_benchmark: bool = True
    # batches each loader worker prepares ahead (workers stay alive across epochs)
    prefetch_factor: int = bounded(4, ge=1)
    # write checkpoints in a background thread (the step continues; files stay atomic)
    async_checkpoint: bool = True
    # P x K batches per optimiser step, their gradients added (facekd.training.ddp_options)
    grad_accum_steps: int = bounded(1, ge=1, le=1024)
    # uniform noise of this many uint8 rounding steps on each activation an INT8 export rounds,
    # in training only (facekd.training.quant_noise); 0: none
    quant_noise: float = bounded(0.0, ge=0, le=16)
    # the gradient also flows through that noise's step size (each tensor's batch range): the network
    # learns to keep its activations' ranges compact (facekd.training.quant_noise)
    quant_noise_range_grad: bool = False


#: ``ddp.grad_compression``: the gradients' dtype on the wire
GRAD_COMPRESSIONS = ("none", "fp16", "bf16")


@dataclass
class DDPConfig:
    """How DistributedDataParallel all-reduces the backbone's gradients (under torchrun)."""
    bucket_cap_mb: float = bounded(25.0, gt=0, le=4096)   # MiB of gradients per all-reduce (torch: 25)
    static_graph: bool = False         # the same parameters get gradients every step (DDP checks less)
    grad_compression: str = "none"     # none | fp16 | bf16: gradients all-reduced in half precision


@dataclass
class DegradeConfig:
    """Low-resolution view given to the student (high-res -> low-res distillation)."""
    enabled: bool = False
    min_size: int = bounded(14, ge=1, le=112)        # sides of the degraded 112 px face
    max_size: int = bounded(56, ge=1, le=112)        # at least min_size
    blur_prob: float = bounded(0.0, ge=0, le=1)
    jpeg_prob: float = bounded(0.0, ge=0, le=1)
    noise_prob: float = bounded(0.0, ge=0, le=1)
    clean_prob: float = bounded(0.0, ge=0, le=1)     # share of student views left at full resolution


@dataclass
class FramingConfig:
    """How the teacher sees a face (:class:`facekd.teachers.Framing`); null: the kind's default."""
    # the teacher's input side (default: model / graph / 150 for dlib)
    input_size: Optional[int] = bounded(None, ge=1, le=MAX_INPUT_SIZE)
    template: Optional[str] = None     # arcface | dlib: where the 5 landmarks lie in that input
    channel_order: Optional[str] = None  # RGB | BGR
    mean: Optional[float] = None       # input = (pixel - mean) / std, pixels 0..255
    std: Optional[float] = bounded(None, gt=0)


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run (:mod:`facekd.teachers`)."""
    kind: str = "torch"                # torch | onnx | sface | dlib | embeddings | ensemble
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="iresnet18"))
    checkpoint: Optional[str] = None   # kind torch: facekd checkpoint or insightface backbone.pth
    path: Optional[str] = None         # onnx: the .onnx; dlib: the .dat (default: packaged); embeddings: .npz
    framing: FramingConfig = field(default_factory=FramingConfig)
    # dlib: torch (default; the torch port) | dlib-bin (dlib's binding); onnx / sface: onnxruntime
    # (default on the CPU) | torch (default on a GPU: the graph as a PyTorch module, bf16 with train.amp)
    backend: Optional[str] = None
    # ensemble: the member teachers (each a teacher config of its own, e.g. [{kind: sface}, {kind: dlib}]);
    # the target is their L2-normalised embeddings side by side, each scaled by its member weight
    members: List["TeacherConfig"] = field(default_factory=list)
    member_weights: List[float] = field(default_factory=list)   # ensemble: one per member (default: all 1)
    # dlib: worker processes (default: the thread budget, FACEKD_THREADS/JOBS)
    threads: Optional[int] = bounded(None, ge=1, le=MAX_WORKERS)
    # Hinton KD without a teacher head (or with other identities): logits = scale * cos(e_t, c_k)
    # over the mean normalised teacher embedding c_k of each training identity; null: the
    # student's margin-head scale
    class_centre_scale: Optional[float] = bounded(None, gt=0)
    # Distil the teacher's embeddings centred on the training set: t -> t/|t| - mu, mu the mean
    # unit teacher embedding of the clean training faces (needs the cache).  For teachers whose
    # embeddings share one dominant direction (dlib: |mu| = 0.91, random pairs cos 0.84), where a
    # cosine target is otherwise learnt by matching mu alone.  Stored in the student checkpoint
    # (teacher_center) so cross-model verification centres the teacher's gallery the same way.
    center: bool = False
    # with center: also whiten them (ZCA over the clean training faces: t -> (t/|t| - mu) W, W the
    # inverse square root of their covariance), so that every direction of the teacher's space weighs
    # the same in a cosine target (issue 34's diagnostics); a training-time transform, not stored
    whiten: bool = False
    cache: bool = True                 # cache teacher embeddings/logits per dataset
    # where the targets come from (facekd.training.teaching): clean_cache (the clean face's, whatever
    # the student's view) | view_cache (teacher.views fixed augmented views per face, embedded once)
    # | online (the teacher embeds every batch's own view)
    targets: str = "clean_cache"
    views: int = bounded(0, ge=0, le=100)   # view_cache: views per face (>= 1 there; the cache holds them all)
    cache_dir: Optional[str] = None    # default: <output_dir>/../teacher_cache
    # added for facekd.training: storage dtype of cached teacher embeddings (float32 | float16)
    cache_dtype: str = "float32"
    # keep the caches in memory-mapped stores (facekd.training.target_store): rows stay on disk,
    # each rank writes and reads only its rows; with cache_dtype float16 for 100k+ faces x views
    store: bool = False
    # added for facekd.training: if `checkpoint` does not exist, train-student first trains a
    # teacher with this config file (e.g. teacher_synthetic.yaml) and uses its best.pt
    train_config: Optional[str] = None


@dataclass
class ExperimentConfig:
    """Everything one ``train-teacher`` or ``train-student`` run needs."""
    name: str = "default"
    output_dir: str = "runs/default"
    seed: int = bounded(0, ge=0, le=2 ** 32 - 1)   # numpy seeds take 32 bits
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    teacher: Optional[TeacherConfig] = None
    # "teacher": start the student from the teacher's weights (same architecture; "transfer,
    # then distil", Karlekar et al. 2019); a path: from a facekd training checkpoint's weights
    # (a warm start with a new schedule, e.g. the next cycle of a long run); null: fresh
    init_from: Optional[str] = None
    # the training view's augmentations (facekd.data.augment), applied before degradation; the
    # teacher sees the same view with teacher.targets view_cache or online
    augment: List[Dict[str, Any]] = field(default_factory=list)
    losses: List[Dict[str, Any]] = field(
        default_factory=lambda: [{"name": "arcface", "weight": 1.0, "scale": 64.0, "margin": 0.5}])


# --------------------------------------------------------------------------- loading

def _parse_number(value: Any) -> Optional[Union[int, float]]:
    """``value`` as an int or float (YAML reads ``1e-3`` as a string), None when it is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
    return None


def _coerce_number(value: Any, hint: type, key: str, origin: str) -> Union[int, float]:
    """``value`` as ``hint`` (int or float): finite, and whole for an int."""
    number = _parse_number(value)
    if number is None:
        raise ConfigError(f"{origin}: {key} must be {hint.__name__}, got {value!r}")
    if hint is float or isinstance(number, float):
        try:
            number = float(number)
        except OverflowError:             # an integer past float's range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{origin}: {key} must be a finite number, got {value!r}")
    if hint is int and isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{origin}: {key} must be an integer, got {value!r}")
        number = int(number)
    return number


def _coerce(value: Any, hint: Any, key: str, origins: Origins) -> Any:
    """Check/convert ``value`` against the type ``hint``; errors name ``key`` and where it was set."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    source = origins.of(key)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, origins)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return from_dict(hint, value, source=origins, prefix=key + ".")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}.{i}", origins) for i, item in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        return _coerce_number(value, hint, key, source)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    return value


def _check_range(value: Any, rule: Optional[Range], key: str, origins: Origins) -> None:
    """Refuse a number (or an item of a list of numbers) outside ``rule``."""
    if rule is None or value is None:
        return
    items = [(f"{key}.{i}", item) for i, item in enumerate(value)] if isinstance(value, list) else [(key, value)]
    for where, item in items:
        if item not in rule:
            raise ConfigError(f"{origins.of(where)}: {where} must be {rule}, got {item!r}")


def from_dict(cls: type, data: Dict[str, Any], source: Union[str, Origins] = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and numbers outside a
    field's :func:`bounded` range raise ``ConfigError`` naming the key and ``source`` (a label,
    or the :class:`Origins` of every key)."""
    origins = source if isinstance(source, Origins) else Origins(source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((key for key in data if key not in fields), key=str)    # YAML keys may be numbers
    if unknown:
        keys = ", ".join(f"{prefix}{key}" for key in unknown)
        raise ConfigError(f"{origins.of(f'{prefix}{unknown[0]}')}: unknown config key(s) {keys}; "
                          f"valid keys of {prefix.rstrip('.') or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key, origins)
        _check_range(kwargs[key], fields[key].metadata.get(RANGE), prefix + key, origins)
    return cls(**kwargs)


def on_device_conflict(degrade: bool, fixed_views: bool) -> Optional[str]:
    """Why ``data.on_device`` cannot serve a run that makes degraded views (``degrade``) or reads the
    teacher's fixed views (``fixed_views``: ``teacher.targets: view_cache``), or None when it can: both are
    made per face on the host.  The config check and :class:`~facekd.training.device_views.DeviceViews` ask it."""
    if degrade:
        return "data.on_device cannot go with degrade.enabled: low-resolution views are made per face on the host"
    if fixed_views:
        return ("data.on_device cannot go with teacher.targets: view_cache: its fixed views are made per face on "
                "the host (use online, clean_cache or teacher.store)")
    return None


def check_consistency(cfg: ExperimentConfig, origins: Optional[Origins] = None) -> None:
    """Refuse values that contradict each other, before any data or teacher is loaded.

    Raises :class:`ConfigError` naming the keys, their values and where the first was set.
    """
    origins = origins or Origins()

    def refuse(key: str, problem: str) -> None:
        raise ConfigError(f"{origins.of(key)}: {problem}")

    data, train, optim = cfg.data, cfg.train, cfg.optim
    if data.source == "synthetic":
        if train.identities_per_batch > data.num_identities:
            refuse("train.identities_per_batch",
                   f"train.identities_per_batch={train.identities_per_batch} is more than the "
                   f"data.num_identities={data.num_identities} identities of the synthetic data")
        if train.images_per_identity > data.images_per_identity:
            refuse("train.images_per_identity",
                   f"train.images_per_identity={train.images_per_identity} is more than the "
                   f"data.images_per_identity={data.images_per_identity} images each synthetic identity has")
    if optim.warmup_epochs > train.epochs:
        refuse("optim.warmup_epochs", f"optim.warmup_epochs={optim.warmup_epochs:g} is longer than the run "
                                      f"(train.epochs={train.epochs}): the learning rate would never reach optim.lr")
    if optim.min_lr > optim.lr:
        refuse("optim.min_lr", f"optim.min_lr={optim.min_lr:g} is above optim.lr={optim.lr:g}")
    if optim.scheduler == "step":
        if not optim.milestones:
            refuse("optim.milestones", "optim.scheduler=step needs optim.milestones (epochs)")
        late = [m for m in optim.milestones if m > train.epochs]
        if late:
            refuse("optim.milestones", f"optim.milestones {late} lie after the last epoch "
                                       f"(train.epochs={train.epochs}): the learning rate would never drop there")
    if cfg.degrade.min_size > cfg.degrade.max_size:
        refuse("degrade.min_size", f"degrade.min_size={cfg.degrade.min_size} is above "
                                   f"degrade.max_size={cfg.degrade.max_size}")
    if train.unlabelled_per_batch and not data.unlabelled:
        refuse("train.unlabelled_per_batch", f"train.unlabelled_per_batch={train.unlabelled_per_batch} "
                                             "but data.unlabelled names no folder")
    if data.unlabelled and train.unlabelled_per_batch < 1:
        refuse("data.unlabelled", "data.unlabelled is set: train.unlabelled_per_batch must be >= 1")
    if train.quant_noise_range_grad and not train.quant_noise:
        refuse("train.quant_noise_range_grad", "train.quant_noise_range_grad is set but train.quant_noise is 0: "
                                               "there is no noise whose range it would train")
    fixed_views = cfg.teacher is not None and cfg.teacher.targets == "view_cache" and cfg.teacher.cache
    problem = data.on_device and on_device_conflict(cfg.degrade.enabled, fixed_views)
    if problem:
        refuse("data.on_device", problem)
    if cfg.ddp.static_graph and train.grad_accum_steps > 1:    # pytorch/pytorch#143580
        refuse("ddp.static_graph", f"ddp.static_graph cannot go with train.grad_accum_steps={train.grad_accum_steps}: "
                                   "torch's DDP cannot skip the all-reduce (no_sync) of a static graph")
    if cfg.ddp.grad_compression not in GRAD_COMPRESSIONS:
        refuse("ddp.grad_compression", f"ddp.grad_compression must be one of {', '.join(GRAD_COMPRESSIONS)}; got "
                                       f"{cfg.ddp.grad_compression!r}")
    names = [s.name for s in cfg.val.sets]
    if cfg.val.select_best_on is not None and cfg.val.select_best_on not in names:
        refuse("val.select_best_on", f"val.select_best_on={cfg.val.select_best_on!r} is not a val set; "
                                     f"sets: {names}")
    if cfg.init_from is not None and (not isinstance(cfg.init_from, str) or not cfg.init_from.strip()):
        refuse("init_from", f"init_from must be null, 'teacher' or a checkpoint path, got {cfg.init_from!r}")
    teacher = cfg.teacher
    if teacher is not None and teacher.whiten and not teacher.center:
        refuse("teacher.whiten", "teacher.whiten: true needs teacher.center: true (whitening is of the centred targets)")
    if teacher is not None and teacher.targets == "view_cache" and teacher.cache and teacher.views < 1:
        refuse("teacher.views", f"teacher.targets: view_cache needs teacher.views >= 1, got {teacher.views}")


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = (),
                origins: Optional[Origins] = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from a YAML file (with bases) and ``--set`` overrides.

    With no ``path`` the dataclass defaults are used (the built-in synthetic-face run).  When
    neither the file nor its bases set ``name`` / ``output_dir``, they come from the file's path
    (:func:`~facekd.config_files.derived_run`; ``--set`` still overrides them).  Every value is
    checked (types, :func:`bounded` ranges, :func:`check_consistency`); a problem raises
    :class:`ConfigError` naming the key and the file or ``--set`` that set it (``origins``, when
    given, keeps that record for later checks such as :mod:`facekd.training.preflight`).
    """
    origins = origins if origins is not None else Origins()
    data = to_dict(ExperimentConfig())
    if path:
        from_files = load_yaml_with_bases(path, origins=origins)
        data = deep_merge(data, from_files)
        for key, value in derived_run(path).items():
            if key not in from_files:
                data[key] = value
                origins.set(key, f"{path} (its path)")
    for assignment in overrides:
        apply_override(data, assignment, origins)
    cfg = from_dict(ExperimentConfig, data, source=origins)
    check_consistency(cfg, origins)
    return cfg


def to_dict(config: Any) -> Dict[str, Any]:
    """The config as plain data (for checkpoints and logs)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    """The config as YAML text, every key in field order; :func:`load_config` of that text
    gives an equal config (``facekd config`` prints it, each run saves it as ``config.yaml``)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def config_digest(config: Any) -> str:
    """A short stable hash of a config (recorded in exported models)."""
    text = json.dumps(to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
