"""Loading backbone weights: facekd checkpoints and insightface ``backbone.pth`` files.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, so a file from elsewhere cannot run code while it is loaded.  insightface's
``backbone.pth`` (a plain state dict) and facekd's own checkpoints load this way; facekd
checkpoints written before their RNG state was stored as plain data hold numpy arrays, which
are admitted through :data:`NUMPY_SAFE_GLOBALS`.  Anything else is refused with a
:class:`~facekd.errors.DataError` naming the file and the refused global; trusted files load
unrestricted with ``trusted=True`` or ``FACEKD_TRUST_PICKLES=1`` (see :mod:`facekd.fileio`).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from facekd.errors import CheckpointError, DataError
from facekd.fileio import TRUST_HINT, pickles_trusted


def _numpy_safe_globals() -> list:
    """numpy's array-rebuilding functions under the module names numpy 1.x and 2.x pickle them."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    entries = [np.ndarray, np.dtype]
    entries += [(_reconstruct, f"{module}.multiarray._reconstruct") for module in ("numpy.core", "numpy._core")]
    entries += [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", None))
                if name.endswith("DType") and name not in ("ObjectDType", "VoidDType", "StringDType")]
    return entries


#: what ``weights_only`` loading admits beyond torch's defaults: plain numpy arrays (the numpy
#: RNG state of older facekd checkpoints); object arrays stay refused by the loader's own rules
NUMPY_SAFE_GLOBALS = _numpy_safe_globals()
_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")

#: keys under which checkpoint dicts commonly keep the backbone's weights
STATE_DICT_KEYS = ("state_dict", "model", "backbone", "model_state_dict")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: keys the file lacked or had in excess."""
    path: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """True when every key matched."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        if self.exact:
            return f"{self.path}: all keys matched"
        return (f"{self.path}: {len(self.missing)} missing key(s) {self.missing[:8]}, "
                f"{len(self.unexpected)} unexpected key(s) {self.unexpected[:8]}")


def read_checkpoint(path: Union[str, os.PathLike], trusted: Optional[bool] = None) -> Dict[str, Any]:
    """Load a checkpoint on CPU, safely unless ``trusted``.

    Args:
        path: a ``torch.save`` file.
        trusted: ``True`` loads with full unpickling (only for files you trust: it can run
            code); ``None`` (default) follows ``FACEKD_TRUST_PICKLES``; otherwise
            ``weights_only=True`` plus :data:`NUMPY_SAFE_GLOBALS`.

    Raises:
        DataError: naming ``path`` when it is missing, empty, corrupt, or (safe mode) holds
            objects the safe loader refuses; in that case the refused global is named and
            nothing in the file was executed.
    """
    if not os.path.isfile(path):
        raise DataError(path, "checkpoint file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "empty file (0 bytes), not a PyTorch checkpoint")
    if pickles_trusted(trusted):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # pickle, zip and torch errors all mean "not a checkpoint"
            raise DataError(path, f"not a readable PyTorch checkpoint ({_first_line(error)})") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            warnings.simplefilter("ignore", UserWarning)   # "Detected pickle protocol N" on plain pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _GLOBAL_NAME.search(str(error))
        refused = refused.group(1) if refused else _unsafe_global(path)
        if refused:
            raise DataError(path, f"refused to load: unpickling it would call {refused}, which is "
                                  f"not a tensor, number or container; nothing was run (to load a file you trust, "
                                  f"{TRUST_HINT})") from None
        raise DataError(path, f"not a readable PyTorch checkpoint (safe loader: {_weights_only_reason(error)}; "
                              f"for a pickle you trust, {TRUST_HINT})") from None
    except Exception as error:  # zip and torch errors all mean "not a checkpoint"
        raise DataError(path, f"not a readable PyTorch checkpoint ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    """``Type: first sentence`` of an error (torch's zip errors go on for several sentences)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0].split('. ')[0].rstrip('.')}" if text else type(error).__name__


def _weights_only_reason(error: BaseException) -> str:
    """The one useful line of torch's long weights-only message (e.g. ``Unsupported operand 149``)."""
    marker = "WeightsUnpickler error:"
    text = str(error)
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0]
    return _first_line(error)


def _unsafe_global(path: Union[str, os.PathLike]) -> Optional[str]:
    """The first global a pickle (plain, or a torch zip's ``data.pkl``) imports that the safe
    loader would not admit; found by reading the opcodes, nothing is executed."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in NUMPY_SAFE_GLOBALS if not isinstance(g, tuple)}
        allowed |= {g[1] for g in NUMPY_SAFE_GLOBALS if isinstance(g, tuple)}
        strings: List[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
            if opcode.name == "GLOBAL":
                name = arg.replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            else:
                continue
            if not (name.startswith(("torch.", "collections.OrderedDict", "_codecs.encode")) or name in allowed):
                return name
    except Exception:  # a damaged pickle: the caller reports the loader's own reason
        return None
    return None


def extract_state_dict(checkpoint: Mapping[str, Any], path: str = "<checkpoint>") -> Dict[str, torch.Tensor]:
    """The backbone state dict inside ``checkpoint`` with ``module.`` (DDP) prefixes removed.

    Accepts a plain state dict (insightface's ``backbone.pth``) or a dict holding one
    under one of :data:`STATE_DICT_KEYS` (facekd and most training scripts).
    """
    state = checkpoint
    for key in STATE_DICT_KEYS:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict (looked for a plain one and under "
                              f"{list(STATE_DICT_KEYS)}; top-level keys: {list(checkpoint)[:10]})")
    prefix = "module."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> LoadReport:
    """Load weights from ``path`` into ``model``.

    Args:
        model: the backbone to fill.
        path: a plain state dict or a checkpoint dict (see :func:`extract_state_dict`).
        strict: raise :class:`CheckpointError` on missing or unexpected keys; when False
            they are only reported in the returned :class:`LoadReport`.

    A tensor whose shape differs from the model's always raises, naming the key and both
    shapes (e.g. an IResNet-50 file given for an IResNet-100 model).
    """
    path = os.fspath(path)
    state = extract_state_dict(read_checkpoint(path), path)
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise CheckpointError(f"{path}: shape mismatch for {key}: file has "
                                  f"{tuple(tensor.shape)}, model expects {tuple(own[key].shape)}")
    report = LoadReport(path, sorted(set(own) - set(state)), sorted(set(state) - set(own)))
    if strict and not report.exact:
        raise CheckpointError(str(report))
    model.load_state_dict(state, strict=False)
    return report
