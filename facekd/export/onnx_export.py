"""Export a backbone to ONNX: BatchNorm folded, dynamic batch, optional in-graph normalisation.

The exported graph has one input named ``input`` (its ``doc_string`` says what it holds,
see :mod:`facekd.export.formats`) with a dynamic ``batch`` axis and one output named
``embedding``: ``float32 [batch, D]`` *raw* embeddings (L2-normalise them, as everywhere in
facekd).  ``metadata_props`` carry :class:`~facekd.export.metadata.ExportMetadata`.

Example::

    model, info = load_checkpoint_model("runs/kd/best.pt")
    meta = export_onnx(model, "student.onnx", input_format="uint8", metadata=info.metadata())
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from facekd.errors import CheckpointError, ConfigError
from facekd.export.fold import fold_batchnorm
from facekd.export.formats import InputFormat, input_format as get_input_format
from facekd.export.metadata import ExportMetadata, cosine_from_sqeuclidean
from facekd.export.prelu import DEFAULT_PRELU_REWRITE, rewrite_prelu
from facekd.fileio import PathLike
from facekd.registry import Registry

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
MIN_OPSET = 17
#: name -> function(module, example, path, opset) writing the ONNX file
EXPORTERS = Registry("ONNX exporter")


class ExportWrapper(nn.Module):
    """``model`` behind an input format's normalisation (the module that gets exported)."""

    def __init__(self, model: nn.Module, fmt: InputFormat) -> None:
        super().__init__()
        self.model = model
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch given in the wrapper's input format."""
        return self.model(self.fmt.normalize(x))


@EXPORTERS.register("torchscript")
def _export_torchscript(module: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    """The TorchScript-based exporter (``dynamo=False``): fast and robust with ``dynamic_axes``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)


@EXPORTERS.register("dynamo")
def _export_dynamo(module: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    """The ``torch.export``-based exporter (needs onnxscript)."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), None, dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), verbose=False)
        program.save(path, external_data=False)


def _embedding_size(model: nn.Module, size: int) -> int:
    declared = getattr(model, "embedding_size", None)
    if isinstance(declared, int):
        return declared
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, size, size)).shape[-1])


def export_onnx(model: nn.Module, path: PathLike, input_format: str = "float", opset: int = MIN_OPSET,
                metadata: Optional[ExportMetadata] = None, input_size: Optional[int] = None,
                fold_bn: bool = True, exporter: str = "torchscript", example_batch: int = 2,
                prelu: Optional[str] = DEFAULT_PRELU_REWRITE) -> ExportMetadata:
    """Write ``model`` to ``path`` as ONNX and return the metadata recorded in it.

    Args:
        model: a backbone taking normalised ``N x 3 x S x S`` input and returning raw
            embeddings (left untouched: folding works on a copy).
        path: the ``.onnx`` file to write (parent folders are created).
        input_format: ``"float"`` (normalised NCHW float32) or ``"uint8"`` (raw NHWC RGB
            pixels, normalisation in the graph); see :mod:`facekd.export.formats`.
        opset: ONNX opset, at least 17.
        metadata: fields to record (model name, config digest, threshold ...); input and
            embedding fields are filled in from the model and ``input_format``.
        input_size: face side ``S`` (default: ``model.input_size``, else 112).
        fold_bn: fold BatchNorm into the preceding conv/linear layers first.
        exporter: ``"torchscript"`` (default) or ``"dynamo"``.
        example_batch: batch size of the tracing example (the batch axis stays dynamic).
        prelu: rewrite ``PRelu`` nodes with this :data:`facekd.export.prelu.PRELU_REWRITES`
            entry (exact; 2-3x faster in onnxruntime and quantisable, see bench/README.md),
            or ``None`` to keep them.  Recorded as ``facekd.prelu_rewrite``.
    """
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old: facekd exports with opset >= {MIN_OPSET}")
    import onnx

    fmt = get_input_format(input_format)
    size = int(input_size or getattr(model, "input_size", None) or 112)
    network = fold_batchnorm(model) if fold_bn else _eval_copy(model)
    wrapper = ExportWrapper(network, fmt).eval()
    example = torch.as_tensor(fmt.from_uint8(torch.randint(0, 256, (example_batch, size, size, 3),
                                                           dtype=torch.uint8).numpy()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    EXPORTERS.get(exporter)(wrapper, example, str(path), opset)

    meta = dataclasses.replace(metadata or ExportMetadata(), input_name=INPUT_NAME,
                               input_format=fmt.name, input_layout=fmt.layout, input_size=size,
                               normalization_in_graph=fmt.name != "float",
                               embedding_size=_embedding_size(model, size), bn_folded=fold_bn,
                               prelu_rewrite=prelu or "none")
    if meta.params is None:
        from facekd.models import count_parameters
        meta = dataclasses.replace(meta, params=count_parameters(model))
    proto = onnx.load(str(path))
    if prelu is not None:
        rewrite_prelu(proto, prelu)
    proto.producer_name = "facekd"
    proto.doc_string = (f"facekd face embedder ({meta.model_name}): input '{INPUT_NAME}' -> "
                        f"output '{OUTPUT_NAME}' raw [batch, {meta.embedding_size}] embeddings; "
                        "L2-normalise before comparing (cosine similarity).")
    proto.graph.input[0].doc_string = fmt.doc(size)
    proto.graph.output[0].doc_string = f"float32 [batch, {meta.embedding_size}] raw (unnormalised) embeddings"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta.to_props())
    onnx.save(proto, str(path))
    return meta


def _eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


# --------------------------------------------------------------------------- checkpoints

def digest_of(config: Any) -> Optional[str]:
    """:func:`facekd.config.config_digest` of a config dataclass or of its dict form.

    A dict (as stored in checkpoints) is first rebuilt into an ``ExperimentConfig`` so the
    digest equals the one of the training run; a dict that no longer parses is hashed as is.
    """
    from facekd.config import ExperimentConfig, config_digest, from_dict

    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return config_digest(config)
    try:
        return config_digest(from_dict(ExperimentConfig, dict(config), source="checkpoint config"))
    except (ConfigError, TypeError, ValueError):
        text = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def threshold_from_checkpoint(checkpoint: Mapping[str, Any]) -> Tuple[Optional[float], Optional[str]]:
    """``(cosine threshold, source)`` from a training checkpoint, or ``(None, None)``.

    Looks for a top-level ``threshold`` (squared L2 of normalised embeddings, the evaluation
    protocol's scale) and then for ``verification[<best set>]['threshold_mean']`` as written
    by :class:`facekd.training.Trainer`.  Both are fitted on flip-summed embeddings (the
    protocol facekd validates with).
    """
    if checkpoint.get("threshold") is not None:
        return cosine_from_sqeuclidean(float(checkpoint["threshold"])), "checkpoint 'threshold'"
    verification = checkpoint.get("verification") or {}
    if not isinstance(verification, Mapping) or not verification:
        return None, None
    best = (checkpoint.get("best") or {}).get("name")
    name = best if best in verification else next(iter(verification))
    entry = verification[name]
    if not isinstance(entry, Mapping) or entry.get("threshold_mean") is None:
        return None, None
    source = f"verification on {name}"
    if entry.get("epoch") is not None:
        source += f" (epoch {int(entry['epoch']) + 1})"
    return cosine_from_sqeuclidean(float(entry["threshold_mean"])), source


@dataclass
class CheckpointModelInfo:
    """What :func:`load_checkpoint_model` learned from a checkpoint besides the weights."""
    path: str
    model_config: Dict[str, Any]
    config_digest: Optional[str]
    threshold: Optional[float]           # cosine similarity
    threshold_source: Optional[str]
    #: mean unit teacher embedding a ``teacher.center`` student was distilled against
    teacher_center: Optional[Tuple[float, ...]] = None

    def metadata(self, model: Optional[nn.Module] = None) -> ExportMetadata:
        """Export metadata for this checkpoint (with params/MACs when ``model`` is given)."""
        params = macs = None
        if model is not None:
            from facekd.models import count_macs, count_parameters
            params = count_parameters(model)
            macs = count_macs(model, int(self.model_config.get("input_size", 112)))
        return ExportMetadata(model_name=str(self.model_config.get("name")), config_digest=self.config_digest,
                              threshold=self.threshold, threshold_source=self.threshold_source,
                              threshold_flip=None if self.threshold is None else True,
                              params=params, macs=macs, teacher_center=self.teacher_center)


def load_checkpoint_model(path: PathLike, arch: Optional[str] = None,
                          embedding_size: Optional[int] = None,
                          input_size: Optional[int] = None) -> Tuple[nn.Module, CheckpointModelInfo]:
    """Rebuild the backbone a facekd checkpoint describes and load its weights (eval mode).

    ``arch``/``embedding_size``/``input_size`` describe a plain state dict that has no
    ``model_config`` (they override nothing when the checkpoint has one).
    """
    from facekd.config import ModelConfig
    from facekd.models import build_model, load_pretrained, read_checkpoint

    path = os.fspath(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    config = checkpoint.get("model_config")
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if config is None:
        if not arch:
            raise CheckpointError(f"{path}: the checkpoint has no 'model_config'; name the architecture "
                                  "(--arch NAME, plus --embedding-size/--input-size)")
        config = {"name": arch, "embedding_size": embedding_size or 512, "input_size": input_size or 112}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in dict(config).items() if k in known})
    try:
        model = build_model(model_cfg)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: cannot build the model it describes ({error})") from None
    load_pretrained(model, path, strict=True)
    model.eval()
    threshold, source = threshold_from_checkpoint(checkpoint)
    center = checkpoint.get("teacher_center")
    info = CheckpointModelInfo(path, dataclasses.asdict(model_cfg), digest_of(checkpoint.get("config")),
                               threshold, source,
                               None if center is None else tuple(torch.as_tensor(center).flatten().tolist()))
    return model, info
