"""Run exported models with onnxruntime: the evaluation embedder and the deployment API.

* :class:`OnnxEmbedder` — the *embedder* protocol of docs/DESIGN.md: called on a normalised
  float ``N x 3 x S x S`` batch (tensor or array), returns raw ``float32 [N, D]``
  embeddings.  Models exported with ``uint8`` input get the batch converted back to pixels.
  :meth:`OnnxEmbedder.run` feeds the graph's own input format directly.
* :class:`FaceEmbedder` — deployment code: aligned uint8 faces or raw photos (aligned with
  MTCNN) in, L2-normalised embeddings out; :meth:`FaceEmbedder.similarity` and
  :meth:`FaceEmbedder.verify` use the cosine threshold stored in the model.

Bad input raises clear errors: a file that is missing or not ONNX raises
:class:`~facekd.errors.DataError` naming it; a batch of the wrong shape or dtype raises
:class:`ModelInputError` saying what the model expects.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from facekd.embedding_math import l2_normalize, row_cosine
from facekd.errors import DataError, FaceKDError, first_line
from facekd.export.formats import InputFormat, input_format as get_input_format
from facekd.export.int8_options import int8_saturation_warning
from facekd.export.metadata import ExportMetadata
from facekd.export.protos import load_onnx_proto, model_for_precision
from facekd.fileio import PathLike

LOG = logging.getLogger(__name__)

Photo = Union[PathLike, np.ndarray]


class ModelInputError(FaceKDError, ValueError):
    """A batch given to an exported model has the wrong shape, dtype or size."""


def session_options(threads: Optional[int] = None):
    """onnxruntime ``SessionOptions``: ``threads`` intra-op threads (default: this process's share of
    the machine, :func:`facekd.evaluation.embed.thread_budget`), one inter-op thread, full graph
    optimisation."""
    import onnxruntime as ort

    from facekd.evaluation.embed import thread_budget

    options = ort.SessionOptions()
    threads = threads or thread_budget()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def resize_faces(faces: np.ndarray, size: int) -> np.ndarray:
    """Aligned square faces ``N x H x H x 3`` resized to ``size`` (returned as is when ``H == size``)."""
    if faces.shape[1:3] == (size, size):
        return faces
    import cv2

    interpolation = cv2.INTER_AREA if faces.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(face, (size, size), interpolation=interpolation) for face in faces])


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype} {list(array.shape)}"


class OnnxEmbedder:
    """An exported model as an evaluation embedder (normalised float NCHW in, raw ``[N, D]`` out).

    Args:
        path: the ``.onnx`` file (exported by :func:`facekd.export.export_onnx`; other
            single-input face models work when their input is float NCHW; files as shipped
            are repaired in memory or refused by :mod:`facekd.export.onnx_graph`).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).
        batch_size: largest chunk run at once (``None``: the whole batch).
        resize: accept normalised batches of another square size and resize them to the
            model's (area when shrinking, as :class:`facekd.preprocess.InputResize`);
            by default such a batch is an error.

    Attributes:
        metadata: the file's :class:`~facekd.export.metadata.ExportMetadata`.
        input_format: the :class:`~facekd.export.formats.InputFormat` of the graph input.
        input_size, embedding_size: face side and output dimension.
    """

    def __init__(self, path: PathLike, threads: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, batch_size: Optional[int] = None,
                 resize: bool = False) -> None:
        from facekd.export.onnx_graph import open_embedder

        self.path = os.fspath(path)
        self.session = open_embedder(self.path, session_options(threads),
                                     list(providers or ["CPUExecutionProvider"]))
        # the model open_embedder read (the repairs leave its metadata as the file has it)
        self.metadata = ExportMetadata.from_proto(self.session.prepared.model, self.path)
        warning = int8_saturation_warning(self.path, self.metadata.int8_options)
        if warning:
            LOG.warning(warning)
        self.input = self.session.input
        self.output_name = self.session.output_name
        self.input_format = self._format_of_graph()
        self.input_size = self._size_of_graph()
        self.batch_size = batch_size
        self.resize = resize
        self.embedding_size = int(self.metadata.embedding_size or self._output_dim() or 0) or None

    # ------------------------------------------------------------------ graph inspection
    def _format_of_graph(self) -> InputFormat:
        elem = self.input.type   # 'tensor(float)' / 'tensor(uint8)'
        name = {"tensor(float)": "float", "tensor(uint8)": "uint8"}.get(elem)
        if name is None:
            raise DataError(self.path, f"unsupported input type {elem} (expected float32 or uint8)")
        return get_input_format(name)

    def _size_of_graph(self) -> int:
        shape = list(self.input.shape)
        if len(shape) != 4:
            raise DataError(self.path, f"expected a 4-d image input, got shape {shape}")
        spatial = shape[2] if self.input_format.layout == "NCHW" else shape[1]
        if isinstance(spatial, int):
            return spatial
        return int(self.metadata.input_size)

    def _output_dim(self) -> Optional[int]:
        dim = self.session.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else None

    @property
    def expected(self) -> str:
        """The graph input, in words (for error messages)."""
        dims = ", ".join(str(d) for d in self.input_format.shape(self.input_size, "N"))
        return f"{self.input_format.dtype.name} [{dims}] ({self.input_format.layout}, {self.input_format.description})"

    # ------------------------------------------------------------------ running
    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` if it matches the graph input's dtype and shape, else :class:`ModelInputError`."""
        batch = np.asarray(batch)
        want = self.input_format.shape(self.input_size, len(batch) if batch.ndim else 0)
        if batch.dtype != self.input_format.dtype:
            raise ModelInputError(f"{self.path}: wrong input dtype: got {_describe(batch)}, "
                                  f"expected {self.expected}")
        if batch.ndim != 4 or tuple(batch.shape) != tuple(want) or len(batch) == 0:
            raise ModelInputError(f"{self.path}: wrong input shape: got {_describe(batch)}, "
                                  f"expected {self.expected}")
        return np.ascontiguousarray(batch)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw ``float32 [N, D]`` embeddings of a batch in the graph's own input format."""
        batch = self.check_input(batch)
        try:
            return self.session.run_batch(batch, self.batch_size)
        except Exception as error:  # onnxruntime's own types: a graph whose inner shapes do not hold
            raise ModelInputError(f"{self.path}: the model cannot run on this batch "
                                  f"({first_line(error)})") from None

    def __call__(self, batch: Any) -> np.ndarray:
        """Raw embeddings of a normalised float ``N x 3 x S x S`` batch (tensor or array)."""
        array = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
        if (self.resize and array.ndim == 4 and array.shape[1] == 3 and array.shape[2] == array.shape[3]
                and array.shape[2] != self.input_size and np.issubdtype(array.dtype, np.floating)):
            import torch

            from facekd.preprocess import resize_batch

            array = resize_batch(torch.from_numpy(np.ascontiguousarray(array)), self.input_size).numpy()
        if not np.issubdtype(array.dtype, np.floating):
            raise ModelInputError(f"{self.path}: wrong input dtype: the embedder takes a normalised float "
                                  f"[N, 3, {self.input_size}, {self.input_size}] batch "
                                  f"(facekd.preprocess.normalize_uint8), got {_describe(array)}; "
                                  "use FaceEmbedder.embed_aligned for uint8 faces")
        if array.ndim != 4 or array.shape[1:] != (3, self.input_size, self.input_size):
            raise ModelInputError(f"{self.path}: wrong input shape: the embedder takes a normalised float "
                                  f"[N, 3, {self.input_size}, {self.input_size}] batch, got {_describe(array)}")
        return self.run(self.input_format.from_normalized(array))

    def embed_uint8(self, faces: np.ndarray) -> np.ndarray:
        """Raw embeddings of aligned uint8 RGB faces ``N x S x S x 3``."""
        faces = np.asarray(faces)
        if faces.dtype != np.uint8:
            raise ModelInputError(f"{self.path}: wrong input dtype: expected uint8 RGB faces "
                                  f"[N, {self.input_size}, {self.input_size}, 3], got {_describe(faces)}")
        if faces.ndim != 4 or faces.shape[1:] != (self.input_size, self.input_size, 3):
            raise ModelInputError(f"{self.path}: wrong input shape: expected uint8 RGB faces "
                                  f"[N, {self.input_size}, {self.input_size}, 3], got {_describe(faces)}")
        return self.run(self.input_format.from_uint8(faces))


class FaceEmbedder:
    """Deployment API: faces in, L2-normalised embeddings and same/different decisions out.

    Args:
        onnx_path: a model exported by ``facekd export``.
        aligner: a :class:`facekd.data.align.FaceAligner` for raw photos (default: one
            created on first use, MTCNN on CPU).
        threads: onnxruntime intra-op threads.
        flip: add the embedding of each face's mirror image (insightface's test-time flip);
            default: as the stored threshold was fitted (``facekd.threshold_flip``), else off.
        threshold: cosine-similarity threshold overriding the one stored in the model.
        precision: ``"fp32"`` runs ``onnx_path``; ``"int8"`` runs its INT8 sibling
            (``student.onnx`` -> ``student_int8.onnx``, written by ``facekd export --int8``)
            with the threshold stored in that file.

    Example::

        embedder = FaceEmbedder("student.onnx")
        a, b = embedder.embed_photos(["alice1.jpg", "alice2.jpg"])
        score, same = embedder.verify(a, b)
        fast = FaceEmbedder("student.onnx", precision="int8")
    """

    def __init__(self, onnx_path: PathLike, aligner: Any = None, threads: Optional[int] = None,
                 flip: Optional[bool] = None, threshold: Optional[float] = None,
                 precision: str = "fp32") -> None:
        self.model = OnnxEmbedder(model_for_precision(onnx_path, precision), threads=threads)
        self._aligner = aligner
        self.flip = bool(self.model.metadata.threshold_flip) if flip is None else flip
        self._threshold = threshold

    @property
    def path(self) -> str:
        """The model file."""
        return self.model.path

    @property
    def precision(self) -> str:
        """``int8`` when the model file is quantised (``facekd.quantization``), else ``fp32``."""
        return "int8" if self.model.metadata.quantization.startswith("int8") else "fp32"

    @property
    def metadata(self) -> ExportMetadata:
        """The model's recorded metadata."""
        return self.model.metadata

    @property
    def threshold(self) -> Optional[float]:
        """Cosine-similarity threshold (same person iff ``similarity >= threshold``), or ``None``."""
        return self._threshold if self._threshold is not None else self.model.metadata.threshold

    @property
    def aligner(self):
        """The MTCNN aligner used by :meth:`embed_photos` (created on first use)."""
        if self._aligner is None:
            from facekd.data.align import FaceAligner

            self._aligner = FaceAligner(size=112)
        return self._aligner

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """L2-normalised ``float32 [N, D]`` embeddings of aligned uint8 RGB faces.

        ``faces`` is ``N x H x H x 3`` (or one ``H x H x 3`` face) aligned with the arcface
        template, normally at 112x112; a model with another input size gets them resized.
        """
        faces = np.asarray(faces)
        if faces.ndim == 3:
            faces = faces[None]
        if faces.dtype != np.uint8:
            raise ModelInputError(f"{self.path}: aligned faces must be uint8 RGB [N, H, H, 3], "
                                  f"got {_describe(faces)}")
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2] or not len(faces):
            raise ModelInputError(f"{self.path}: aligned faces must be square uint8 RGB [N, H, H, 3] "
                                  f"(112x112 from the arcface alignment), got {_describe(faces)}")
        faces = resize_faces(faces, self.model.input_size)
        embeddings = self.model.embed_uint8(faces)
        if self.flip:
            embeddings = embeddings + self.model.embed_uint8(np.ascontiguousarray(faces[:, :, ::-1]))
        return l2_normalize(embeddings)

    def align_photos(self, photos: Sequence[Photo]) -> np.ndarray:
        """MTCNN-aligned 112x112 faces of ``photos`` (paths or uint8 RGB arrays).

        A photo without a detectable face, or too small to hold one, raises :class:`DataError` naming it.
        """
        from facekd.data.image_io import read_image

        faces: List[np.ndarray] = []
        for index, photo in enumerate(photos):
            name = os.fspath(photo) if isinstance(photo, (str, os.PathLike)) else f"<photo {index}>"
            image = read_image(photo) if isinstance(photo, (str, os.PathLike)) else np.asarray(photo)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise DataError(name, f"expected a uint8 RGB HxWx3 photo, got {_describe(image)}")
            problem = getattr(self.aligner, "unusable", lambda image: None)(image)
            if problem is not None:
                raise DataError(name, problem)
            face = self.aligner.align(image)
            if face is None:
                raise DataError(name, "no face found by MTCNN (pass an aligned face instead?)")
            faces.append(face)
        return np.stack(faces)

    def embed_photos(self, photos: Union[Photo, Sequence[Photo]]) -> np.ndarray:
        """L2-normalised embeddings of raw photos (paths or arrays), each aligned with MTCNN."""
        if isinstance(photos, (str, os.PathLike)) or (isinstance(photos, np.ndarray) and photos.ndim == 3):
            photos = [photos]
        return self.embed_aligned(self.align_photos(list(photos)))

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> Union[float, np.ndarray]:
        """Cosine similarity of embeddings ``a`` and ``b`` (row-wise for ``[N, D]`` inputs)."""
        scores = row_cosine(a, b)
        return float(scores) if np.ndim(scores) == 0 else scores

    def verify(self, a: np.ndarray, b: np.ndarray) -> Tuple[float, Optional[bool]]:
        """``(similarity, same)`` of two embeddings; ``same`` is ``None`` without a threshold."""
        score = self.similarity(a, b)
        return score, None if self.threshold is None else bool(score >= self.threshold)
