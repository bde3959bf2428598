"""What every teacher source shares: the :data:`TEACHERS` registry and the :class:`Teacher` base.

A teacher is frozen: it maps the student's aligned faces to embeddings and, optionally,
provides a classifier head (Hinton KD) and feature maps (feature-map distillation).
Sources (``teacher.kind`` in a config, ``kind=`` in ``facekd eval --model``):

===============  ===================================================================
``torch``         a facekd checkpoint or an insightface ``backbone.pth`` (:mod:`.torch_teacher`)
``onnx``          any ONNX face embedder, e.g. insightface's ``w600k_r50.onnx`` (:mod:`.onnx_teacher`)
``dlib``          dlib's ResNet face model, 128-d (:mod:`.dlib_teacher`)
``embeddings``    precomputed vectors keyed by image path (:mod:`.embeddings_teacher`)
===============  ===================================================================

Every source declares its :class:`~facekd.teachers.framing.Framing` and a
:meth:`Teacher.fingerprint` that changes with its weights and framing, so the teacher
cache (:mod:`facekd.training.teacher_cache`) is rebuilt when either changes.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from facekd.fileio import PathLike
from facekd.registry import Registry
from facekd.teachers.framing import Framing

#: ``teacher.kind`` -> factory ``(teacher_cfg, device) -> Teacher``
TEACHERS = Registry("teacher")


def state_dict_digest(module_or_state: Union[nn.Module, Dict[str, torch.Tensor]]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (hex)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_digest(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class Teacher:
    """A frozen source of embeddings for the student's aligned 112x112 faces.

    Subclasses set :attr:`kind`, :attr:`embedding_size`, :attr:`framing` and implement
    :meth:`embed_frames` and :meth:`weights_digest`.

    Attributes:
        kind: the :data:`TEACHERS` name.
        embedding_size: D of the embeddings.
        framing: how the teacher sees a face.
        source: the file it was loaded from (for messages).
        head: a margin head with ``logits(embedding)`` over :attr:`classes`, or None.
        classes: identity names the head covers, or None.
        backbone: the ``nn.Module`` for teachers that have one (feature maps), else None.
        device: where the teacher runs.
    """

    kind = "teacher"
    head: Optional[torch.nn.Module] = None
    classes: Optional[List[str]] = None
    backbone: Optional[torch.nn.Module] = None

    def __init__(self, framing: Framing, embedding_size: int, source: str = "",
                 device: torch.device = torch.device("cpu")) -> None:
        self.framing = framing
        self.embedding_size = int(embedding_size)
        self.source = source
        self.device = torch.device(device)

    # ------------------------------------------------------------------ identity
    def weights_digest(self) -> str:
        """A digest of what the teacher computes with (weights, model file)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Text that changes with the teacher's weights, framing or precision (cache key part)."""
        return f"kind={self.kind}|weights={self.weights_digest()}|{self.framing.describe()}"

    # ------------------------------------------------------------------ embedding
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Raw float32 ``[N, D]`` embeddings of teacher crops (:meth:`Framing.frame` output)."""
        raise NotImplementedError

    def embed(self, faces: Any) -> torch.Tensor:
        """Raw float32 ``[N, D]`` embeddings (CPU) of aligned uint8 faces ``N x 112 x 112 x 3`` (RGB)."""
        faces = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
        if len(faces) == 0:
            return torch.zeros((0, self.embedding_size))
        return self.embed_frames(self.framing.frame(faces)).float().cpu()

    def embed_dataset_rows(self, dataset: Any, indices: Sequence[int]) -> Optional[torch.Tensor]:
        """``[len(indices), 2, D]`` looked up without pixels, or None to have them embedded.

        Precomputed embeddings answer here; teachers that compute from pixels return None.
        """
        return None

    def to(self, device: Any) -> "Teacher":
        """Move to ``device`` (only teachers with a torch model move)."""
        self.device = torch.device(device)
        return self

    def describe(self) -> Dict[str, Any]:
        """What the logs and reports show about the teacher."""
        return {"kind": self.kind, "source": self.source, "embedding_size": self.embedding_size,
                "framing": self.framing.describe()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {self.embedding_size}-d, {self.framing.template} " \
               f"{self.framing.input_size}px)"


def class_centres(embeddings: torch.Tensor, labels: Any, num_classes: int) -> torch.Tensor:
    """``[C, D]`` unit-norm centre of each identity: the mean of its L2-normalised embeddings.

    ``embeddings`` are ``[N, D]`` teacher embeddings of the training samples (clean view);
    an identity without samples gets a zero row.
    """
    unit = nn.functional.normalize(embeddings.float(), dim=1)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    sums = torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit)
    return nn.functional.normalize(sums, dim=1)


class ClassCentreHead(nn.Module):
    """Margin-free teacher logits without a classifier: ``scale * cos(e, c_k)`` over class centres.

    For Hinton KD with a head-less teacher (dlib, ONNX, an insightface ``backbone.pth``, or a
    head trained on other identities): ``c_k`` is the mean normalised teacher embedding of
    identity ``k`` over the training set (:func:`class_centres`), so the logits say how
    close the teacher places a face to each identity — the same form as a margin head's
    ``logits(embedding)``.  Use the student margin head's ``scale`` so that both sides of
    the KL divergence have the same range.
    """

    def __init__(self, centres: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("centres", nn.functional.normalize(centres.float(), dim=1))
        self.scale = float(scale)
        self.num_classes, self.embedding_size = self.centres.shape

    def logits(self, embedding: torch.Tensor, labels: Any = None) -> torch.Tensor:
        """``[N, C]`` scaled cosines of ``embedding`` ``[N, D]`` to the centres (``labels`` ignored)."""
        return self.scale * nn.functional.normalize(embedding.float(), dim=1) @ self.centres.t()


def existing_file(path: Optional[PathLike], what: str) -> str:
    """``path`` as a string, or a :class:`~facekd.errors.ConfigError` / ``DataError`` saying what is missing."""
    from facekd.errors import ConfigError, DataError

    if not path:
        raise ConfigError(f"{what}: no file given (set teacher.path)")
    if not os.path.isfile(path):
        raise DataError(path, f"{what} not found")
    return os.fspath(path)


def packaged_file(package: str, relative: str, kind: str, install_hint: str) -> str:
    """The file ``relative`` inside the installed ``package``, found without importing it.

    Raises :class:`~facekd.errors.ConfigError` saying how to install the package when it is
    missing, :class:`~facekd.errors.DataError` naming the path when the file is.
    """
    import importlib.util

    from facekd.errors import ConfigError, DataError

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"teacher.kind={kind}: no teacher.path given and {package} is not installed: "
                          f"{install_hint}")
    path = os.path.join(list(spec.submodule_search_locations)[0], *relative.split("/"))
    if not os.path.isfile(path):
        raise DataError(path, f"the {kind} model file is missing from the installed {package} package")
    return path


def build_registered(teacher_cfg: Any, device: torch.device = torch.device("cpu"), amp: str = "none") -> "Teacher":
    """The teacher of a ``TeacherConfig`` from :data:`TEACHERS` (``kind`` checked; what
    :func:`facekd.teachers.build_teacher` is, for sources that build other teachers)."""
    from facekd.errors import ConfigError

    kind = getattr(teacher_cfg, "kind", "torch")
    if kind not in TEACHERS:
        raise ConfigError(f"teacher.kind {kind!r} is unknown; known: {sorted(TEACHERS)}")
    return TEACHERS.get(kind)(teacher_cfg, device=torch.device(device), amp=amp)
