"""Loading the models ``facekd eval`` compares: facekd checkpoints, ONNX files and any teacher
source, each as an *embedder* with what the report shows about it (:class:`LoadedModel`);
:func:`measure_latency` times one."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from facekd.errors import CheckpointError, ConfigError, DataError
from facekd.evaluation.embed import Embedder, TorchEmbedder, measure_embedding_size
from facekd.evaluation.specs import ModelSpec
from facekd.preprocess import INPUT_SIZE
from facekd.registry import Registry

#: model file format -> loader(spec, options) -> LoadedModel
MODEL_FORMATS = Registry("model format")
#: file suffix -> format name in :data:`MODEL_FORMATS`
SUFFIX_FORMATS = {".pt": "torch", ".pth": "torch", ".ckpt": "torch", ".onnx": "onnx"}


# --------------------------------------------------------------------------- loading models

@dataclass
class LoadedModel:
    """A model ready to embed, with what the report shows about it."""
    spec: ModelSpec
    format: str
    embedder: Embedder
    embedding_size: int
    input_size: int = INPUT_SIZE
    arch: Optional[str] = None
    params: Optional[int] = None
    macs: Optional[int] = None
    #: side of the batches the embedder takes (default ``input_size``; teachers take 112 px faces)
    embedder_input_size: Optional[int] = None
    #: a teacher of precomputed vectors: looked up by image key instead of embedding pixels
    keyed: Any = None
    framing: Optional[str] = None
    #: a student distilled with ``teacher.center``: the mean unit teacher embedding it was trained
    #: against, subtracted from the teacher's gallery embeddings in cross-model verification
    teacher_center: Optional[np.ndarray] = None

    def describe(self) -> Dict[str, Any]:
        """The JSON fields describing the model (without results)."""
        return {"label": self.spec.display_label, "role": self.spec.role, "path": self.spec.path,
                "format": self.format, "arch": self.arch, "embedding_size": self.embedding_size,
                "input_size": self.input_size, "params": self.params, "macs": self.macs,
                **({"framing": self.framing} if self.framing else {})}


def check_embedding_size(path: str, actual: int, declared: Dict[str, Optional[int]]) -> None:
    """Raise :class:`CheckpointError` naming ``path`` if a declared size disagrees with ``actual``."""
    for source, size in declared.items():
        if size is not None and int(size) != int(actual):
            raise CheckpointError(f"{path}: the model produces {actual}-d embeddings but {source} "
                                  f"says {size}")


def load_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
               amp: str = "none") -> LoadedModel:
    """Load ``spec.path`` with the loader its ``kind`` or suffix selects (:data:`SUFFIX_FORMATS`)."""
    if spec.kind not in (None, "torch"):
        loader = load_teacher_model
    else:
        check_model_file(spec)
        suffix = Path(spec.path).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise DataError(spec.path, f"unknown model file type {suffix!r}; expected one of "
                                       f"{sorted(SUFFIX_FORMATS)} (or name a teacher kind=...)")
        loader = MODEL_FORMATS.get(SUFFIX_FORMATS[suffix])
    loaded = loader(spec, device=device, batch_size=batch_size, amp=amp)
    check_embedding_size(spec.path, loaded.embedding_size,
                         {"the --model spec / --embedding-size": spec.embedding_size})
    return loaded


def check_model_file(spec: ModelSpec) -> None:
    """:class:`DataError` unless ``spec.path`` exists (a teacher kind with a packaged model may name none)."""
    from facekd.teachers import PACKAGED_KINDS

    if spec.kind in PACKAGED_KINDS and not spec.path:
        return
    if not spec.path or not os.path.isfile(spec.path):
        raise DataError(spec.path or "<no path>", "model file not found")


def load_teacher_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                       amp: str = "none") -> LoadedModel:
    """Any :mod:`facekd.teachers` source (``spec.kind``), run on 112 px faces framed its way."""
    from facekd.config import FramingConfig, TeacherConfig
    from facekd.teachers import TeacherEmbedder, build_teacher

    check_model_file(spec)
    framing = FramingConfig(spec.input_size, spec.template, spec.channel_order, spec.mean, spec.std)
    options: Dict[str, Any] = {"backend": spec.backend} if spec.backend else {}
    if spec.members:
        options["members"] = [TeacherConfig(kind=kind) for kind in spec.members.split("+")]
    if spec.member_weights:
        try:
            options["member_weights"] = [float(w) for w in spec.member_weights.split("+")]
        except ValueError:
            raise ConfigError(f"--model: member_weights must be numbers joined by '+', "
                              f"got {spec.member_weights!r}") from None
    teacher = build_teacher(TeacherConfig(kind=spec.kind, path=spec.path or None, framing=framing, **options),
                            device, amp)
    keyed = teacher if teacher.kind == "embeddings" else None
    return LoadedModel(spec, teacher.kind, TeacherEmbedder(teacher, batch_size or 0), teacher.embedding_size,
                       teacher.framing.input_size, teacher.kind, embedder_input_size=INPUT_SIZE, keyed=keyed,
                       framing=teacher.framing.describe())


def _checkpoint_model_config(checkpoint: Any, spec: ModelSpec) -> Dict[str, Any]:
    config = checkpoint.get("model_config") if isinstance(checkpoint, dict) else None
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if config is None:
        if not spec.arch:
            raise CheckpointError(f"{spec.path}: the checkpoint has no 'model_config'; name the "
                                  f"architecture with --model path=...,arch=NAME")
        config = {"name": spec.arch, "embedding_size": spec.embedding_size or 512,
                  "input_size": spec.input_size or INPUT_SIZE}
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"{spec.path}: 'model_config' must be a dict with a 'name', got {config!r}")
    return dict(config)


@MODEL_FORMATS.register("torch")
def load_torch_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                     amp: str = "none") -> LoadedModel:
    """A facekd checkpoint (``model_config`` + ``state_dict``) or a plain state dict with ``arch``."""
    from facekd.config import ModelConfig
    from facekd.models import build_model, count_macs, count_parameters, load_pretrained, read_checkpoint
    from facekd.preprocess import InputResize

    checkpoint = read_checkpoint(spec.path)
    config = _checkpoint_model_config(checkpoint, spec)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in config.items() if k in known})
    try:
        model = build_model(model_cfg)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{spec.path}: cannot build the model it describes ({error})") from None
    load_pretrained(model, spec.path, strict=True)
    model.eval()
    params, macs = count_parameters(model), count_macs(model, model_cfg.input_size)
    # pair sets hold 112x112 faces; a model trained at another size sees them resized
    embedder = TorchEmbedder(InputResize(model, model_cfg.input_size), device=device, batch_size=batch_size, amp=amp)
    actual = measure_embedding_size(embedder, model_cfg.input_size)
    check_embedding_size(spec.path, actual, {"its model_config": model_cfg.embedding_size})
    center = checkpoint.get("teacher_center") if isinstance(checkpoint, dict) else None
    return LoadedModel(spec, "torch", embedder, actual, int(model_cfg.input_size), model_cfg.name,
                       params, macs, teacher_center=None if center is None else np.asarray(center, np.float32))


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _onnx_parameter_count(path: str) -> int:
    """Elements of the graph's initializers (the weights)."""
    from facekd.export.runtime import load_onnx_proto

    proto = load_onnx_proto(path, load_weights=False)   # shapes only
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


@MODEL_FORMATS.register("onnx")
def load_onnx_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                    amp: str = "none") -> LoadedModel:
    """An ONNX file run by :class:`facekd.export.runtime.OnnxEmbedder` (``amp`` does not apply).

    The embedding size is measured with one forward pass and checked against what the
    file declares (facekd metadata, else the graph's output shape).
    """
    from facekd.export.runtime import OnnxEmbedder

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    # pair sets hold 112x112 faces; a graph of another side (a 56 px student) sees them resized the
    # way a checkpoint's InputResize does (facekd.preprocess.resize_batch)
    embedder = OnnxEmbedder(spec.path, providers=providers, batch_size=batch_size, resize=True)
    actual = measure_embedding_size(embedder, embedder.input_size)
    check_embedding_size(spec.path, actual, {"its metadata / output shape": embedder.embedding_size})
    meta = embedder.metadata
    params = meta.params if meta.params is not None else _onnx_parameter_count(spec.path)
    arch = meta.model_name if meta.model_name != "unknown" else None
    return LoadedModel(spec, "onnx", embedder, actual, int(embedder.input_size), arch, params, meta.macs)


def measure_latency(embedder: Embedder, input_size: int = INPUT_SIZE, batch_size: int = 1,
                    warmup: int = 3, runs: int = 20) -> float:
    """Median wall time per image in milliseconds over ``runs`` calls on a zero batch."""
    import torch

    batch = torch.zeros(batch_size, 3, input_size, input_size)
    for _ in range(warmup):
        embedder(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        embedder(batch)   # returns numpy: any device work has finished
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0 / batch_size
