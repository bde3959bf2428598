"""Typed experiment configuration loaded from YAML.

A config file may name one or more base files with ``_base_`` (paths relative to the
file); the file's keys are deep-merged over its bases, as in insightface's
arcface_torch ``configs/`` (a small ``base`` plus per-experiment overrides)::

    # configs/student_mbf_cpu.yaml
    _base_: base.yaml
    train:
      epochs: 4

Command lines override single keys with ``--set train.epochs=2`` (the value is parsed
as YAML, list items are addressed by index: ``--set losses.1.weight=0.5``).  Every key
is checked against the dataclasses below: an unknown key or a value of the wrong type
raises :class:`~facekd.errors.ConfigError` naming the dotted key and the file.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from facekd.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    """A backbone from :data:`facekd.models.MODELS`."""
    name: str = "mobilefacenet"
    embedding_size: int = 512
    input_size: int = 112
    params: Dict[str, Any] = field(default_factory=dict)  # extra factory arguments


@dataclass
class DataConfig:
    """A training source from :data:`facekd.data.TRAIN_SOURCES`."""
    source: str = "synthetic"          # synthetic | folder | recordio
    root: Optional[str] = None         # identity-folder root or directory of train.rec/.idx
    num_identities: int = 64           # synthetic only
    images_per_identity: int = 16      # synthetic only
    seed: int = 0                      # synthetic only
    input_size: int = 112
    skip_bad_images: bool = True       # skip (count, warn) unreadable training images
    num_workers: int = 0
    # folders of aligned faces without identities: only the distillation losses see them
    # (train.unlabelled_per_batch of them beside each P x K batch); never a test set (LFW, CFP)
    unlabelled: List[str] = field(default_factory=list)


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
    every_epochs: int = 1
    batch_size: int = 64
    select_best_on: Optional[str] = None   # val-set name; default: the first set


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""
    optimizer: str = "sgd"             # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"          # cosine | step | constant
    warmup_epochs: float = 0.0
    milestones: List[float] = field(default_factory=list)   # epochs, for ``step``
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The training loop."""
    epochs: int = 4
    identities_per_batch: int = 16     # P of a P x K batch
    images_per_identity: int = 4       # K
    amp: str = "none"                  # none | bf16 | fp16
    channels_last: bool = False
    grad_clip: float = 5.0             # 0 disables
    checkpoint_every_steps: int = 100
    log_every_steps: int = 10
    max_steps_per_epoch: int = 0       # 0 = the whole epoch
    progress: bool = True
    # added for facekd.training: random horizontal flip of training samples (the teacher
    # cache holds the embedding of each sample and of its mirror)
    flip: bool = True
    # added for facekd.training: step_<N>.pt checkpoints kept besides last.pt/best.pt (0: none)
    keep_step_checkpoints: int = 2
    # added for issue 12 (training speed): torch.compile the training module
    compile: bool = False
    # unlabelled faces (data.unlabelled) added to each P x K batch
    unlabelled_per_batch: int = 0
    # cuDNN autotuning (torch.backends.cudnn.benchmark) on CUDA
    cudnn_benchmark: bool = True
    # batches each loader worker prepares ahead (workers stay alive across epochs)
    prefetch_factor: int = 4
    # write checkpoints in a background thread (the step continues; files stay atomic)
    async_checkpoint: bool = True


@dataclass
class DegradeConfig:
    """Low-resolution view given to the student (high-res -> low-res distillation)."""
    enabled: bool = False
    min_size: int = 14
    max_size: int = 56
    blur_prob: float = 0.0
    jpeg_prob: float = 0.0
    noise_prob: float = 0.0
    clean_prob: float = 0.0            # share of student views left at full resolution


@dataclass
class FramingConfig:
    """How the teacher sees a face (:class:`facekd.teachers.Framing`); null: the kind's default."""
    input_size: Optional[int] = None   # the teacher's input side (default: model / graph / 150 for dlib)
    template: Optional[str] = None     # arcface | dlib: where the 5 landmarks lie in that input
    channel_order: Optional[str] = None  # RGB | BGR
    mean: Optional[float] = None       # input = (pixel - mean) / std, pixels 0..255
    std: Optional[float] = None


@dataclass
class TeacherConfig:
    """The frozen teacher of a distillation run (:mod:`facekd.teachers`)."""
    kind: str = "torch"                # torch | onnx | sface | dlib | embeddings | ensemble
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="iresnet18"))
    checkpoint: Optional[str] = None   # kind torch: facekd checkpoint or insightface backbone.pth
    path: Optional[str] = None         # onnx: the .onnx; dlib: the .dat (default: packaged); embeddings: .npz
    framing: FramingConfig = field(default_factory=FramingConfig)
    backend: Optional[str] = None      # dlib: torch (default; the torch port) | dlib-bin (dlib's binding)
    # ensemble: the member teachers (each a teacher config of its own, e.g. [{kind: sface}, {kind: dlib}]);
    # the target is their L2-normalised embeddings side by side, each scaled by its member weight
    members: List["TeacherConfig"] = field(default_factory=list)
    member_weights: List[float] = field(default_factory=list)   # ensemble: one per member (default: all 1)
    threads: Optional[int] = None      # dlib: worker processes (default: the thread budget, FACEKD_THREADS/JOBS)
    # Hinton KD without a teacher head (or with other identities): logits = scale * cos(e_t, c_k)
    # over the mean normalised teacher embedding c_k of each training identity; null: the
    # student's margin-head scale
    class_centre_scale: Optional[float] = None
    # Distil the teacher's embeddings centred on the training set: t -> t/|t| - mu, mu the mean
    # unit teacher embedding of the clean training faces (needs the cache).  For teachers whose
    # embeddings share one dominant direction (dlib: |mu| = 0.91, random pairs cos 0.84), where a
    # cosine target is otherwise learnt by matching mu alone.  Stored in the student checkpoint
    # (teacher_center) so cross-model verification centres the teacher's gallery the same way.
    center: bool = False
    cache: bool = True                 # cache teacher embeddings/logits per dataset
    # where the targets come from (facekd.training.teaching): clean_cache (the clean face's, whatever
    # the student's view) | view_cache (teacher.views fixed augmented views per face, embedded once)
    # | online (the teacher embeds every batch's own view)
    targets: str = "clean_cache"
    views: int = 0                     # view_cache: views per face
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
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: ValConfig = field(default_factory=ValConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    teacher: Optional[TeacherConfig] = None
    # "teacher": start the student from the teacher's weights (same architecture; "transfer,
    # then distil", Karlekar et al. 2019); null: a fresh initialisation
    init_from: Optional[str] = None
    # the training view's augmentations (facekd.data.augment), applied before degradation; the
    # teacher sees the same view with teacher.targets view_cache or online
    augment: List[Dict[str, Any]] = field(default_factory=list)
    losses: List[Dict[str, Any]] = field(
        default_factory=lambda: [{"name": "arcface", "weight": 1.0, "scale": 64.0, "margin": 0.5}])


# --------------------------------------------------------------------------- loading

def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the config file ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_config_path(path: Union[str, Path]) -> Path:
    """A config path as given, or a bare name looked up in the packaged ``configs/``."""
    candidate = Path(path)
    try:
        if candidate.exists():
            return candidate
    except (OSError, ValueError) as error:   # a name with a NUL byte, or too long
        raise ConfigError(f"{path!r}: not a usable config file name ({error})") from None
    for name in (candidate, candidate.with_suffix(".yaml")):
        if (CONFIG_DIR / name).exists():
            return CONFIG_DIR / name
    raise ConfigError(f"{path}: config file not found (also looked in {CONFIG_DIR})")


def load_yaml_with_bases(path: Union[str, Path], _seen: Sequence[Path] = ()) -> Dict[str, Any]:
    """Read ``path`` and deep-merge it over the files its ``_base_`` key names."""
    path = resolve_config_path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: Dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, load_yaml_with_bases(path.parent / base, (*_seen, path)))
    return _deep_merge(merged, data)


def apply_override(data: Dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, dotted)]
        else:
            if node.get(key) is None:      # an absent or null section (e.g. teacher)
                node[key] = {}
            if not isinstance(node[key], (dict, list)):
                raise ConfigError(f"--set {dotted}: {'.'.join(keys[:depth + 1])} is not a section")
            node = node[key]
    value = yaml.safe_load(raw)
    if isinstance(node, list):
        node[_list_index(node, keys[-1], dotted)] = value
    else:
        node[keys[-1]] = value


def _list_index(items: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"--set {dotted}: {key!r} is not an index of a list of {len(items)}")
    return int(key)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` against the type ``hint``; errors name ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, source)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return from_dict(hint, value, source=source, prefix=key + ".")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{key}.{i}", source) for i, item in enumerate(value)]
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
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        try:
            converted = hint(value)  # YAML reads 1e-3 as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}") from None
        if hint is int and float(value) != converted:
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return converted
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: Dict[str, Any], source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        keys = ", ".join(prefix + key for key in unknown)
        raise ConfigError(f"{source}: unknown config key(s) {keys}; "
                          f"valid keys of {prefix.rstrip('.') or 'the top level'}: {sorted(names)}")
    kwargs = {key: _coerce(value, hints[key], prefix + key, source) for key, value in data.items()}
    return cls(**kwargs)


def load_config(path: Optional[Union[str, Path]] = None,
                overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from a YAML file (with bases) and ``--set`` overrides.

    With no ``path`` the dataclass defaults are used (the built-in synthetic-face run).
    """
    data = _deep_merge(to_dict(ExperimentConfig()), load_yaml_with_bases(path) if path else {})
    for assignment in overrides:
        apply_override(data, assignment)
    source = str(path) if path else "<defaults>"
    if overrides:
        source += " with --set " + " ".join(overrides)
    return from_dict(ExperimentConfig, data, source=source)


def to_dict(config: Any) -> Dict[str, Any]:
    """The config as plain data (for checkpoints and logs)."""
    return dataclasses.asdict(config)


def config_digest(config: Any) -> str:
    """A short stable hash of a config (recorded in exported models)."""
    text = json.dumps(to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
