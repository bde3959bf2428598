"""Config files: YAML reading, ``_base_`` chains, ``--set`` overrides, where each key was set,
and the run name and directory a file's path implies.

The layout of ``configs/`` (docs/DESIGN.md, "Configs")::

    configs/base.yaml                       the defaults (sets nothing: the dataclasses are their source)
    configs/<name>.yaml                     user-facing configs       -> name <name>, runs/<name>
    configs/experiments/<exp>/<name>.yaml   one experiment's configs  -> name <exp>/<name>, runs/<exp>/<name>

A file that sets neither ``name`` nor ``output_dir`` (nor do its bases) gets them from its path
(:func:`derived_run`), as arcface_torch derives its output directory from the config's file name;
a ``--set`` still wins.  Shipped configs keep their ``_base_`` chains short: one base a file,
at most :data:`MAX_CHAIN` files counting the file itself (``tests/test_shipped_configs.py``).
This module knows nothing of the config's fields (:mod:`facekd.config` does).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from facekd.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: one folder per experiment (``configs/experiments/<experiment>/<run>.yaml``)
EXPERIMENTS_DIR = CONFIG_DIR / "experiments"
#: where derived run directories go (relative to the working directory, as every shipped path)
RUNS_DIR = "runs"
#: the longest ``_base_`` chain of a shipped config: the run's file (the delta), its family base,
#: and the root that base stands on (``configs/experiments/cpu_base.yaml``, or ``teacher_r100.yaml``
#: below a scale teacher's 64-GPU variant)
MAX_CHAIN = 3


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


def deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """``override`` merged over ``base`` (copies): mappings merge key by key, anything else
    (lists included) replaces what ``base`` holds."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_config_path(path: Union[str, Path]) -> Path:
    """A config path as given, or a name looked up in the packaged ``configs/`` and then in
    ``configs/experiments/`` (``student_mbf``, ``cpu_scale/student_plain.yaml``)."""
    candidate = Path(path)
    try:
        if candidate.exists():
            return candidate
    except (OSError, ValueError) as error:   # a name with a NUL byte, or too long
        raise ConfigError(f"{path!r}: not a usable config file name ({error})") from None
    for folder in (CONFIG_DIR, EXPERIMENTS_DIR):
        for name in (candidate, candidate.with_suffix(".yaml")):
            if (folder / name).exists():
                return folder / name
    raise ConfigError(f"{path}: config file not found (also looked in {CONFIG_DIR} and {EXPERIMENTS_DIR})")


class Origins:
    """Where each key of a config was set: a file, a ``--set`` or ``default`` (for error messages).

    :meth:`record` notes a layer in the order the layers are merged; a later layer replaces
    what it overrides.  :meth:`of` answers for a dotted key from its longest recorded prefix
    (``losses.0.scale`` set by a file that sets ``losses``: that file).
    """

    def __init__(self, default: str = "<defaults>") -> None:
        self.default = default
        self._sources: Dict[str, str] = {}

    def record(self, data: Dict[str, Any], source: str, prefix: str = "") -> None:
        """Note ``source`` as the origin of every value in the mapping ``data`` (nested mappings merge)."""
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                self.record(value, source, dotted + ".")
            else:
                self.set(dotted, source)

    def set(self, dotted: str, source: str) -> None:
        """``source`` set ``dotted`` as a whole (what it held before is forgotten)."""
        for key in [k for k in self._sources if k == dotted or k.startswith(dotted + ".")]:
            del self._sources[key]
        self._sources[dotted] = source           # the newest last

    def of(self, dotted: str) -> str:
        """The file or ``--set`` that set ``dotted`` (or a section above it); else the default."""
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            found = self._sources.get(".".join(parts[:end]))
            if found is not None:
                return found
        return self.default

    def last_within(self, dotted: str) -> str:
        """The last file or ``--set`` that set ``dotted``, a section above it or a key inside it
        (for a problem of a whole entry such as ``losses.1``)."""
        for key, source in reversed(self._sources.items()):
            if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
                return source
        return self.default


def _bases_of(path: Path, data: Dict[str, Any]) -> List[Path]:
    """The files the ``_base_`` key of ``data`` (read from ``path``) names, relative to ``path``."""
    bases = data.get("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    return [path.parent / base for base in bases]


def direct_bases(path: Union[str, Path]) -> List[Path]:
    """The files the ``_base_`` key of config file ``path`` names (not their own bases)."""
    path = resolve_config_path(path).resolve()
    return [base.resolve() for base in _bases_of(path, _read_yaml(path))]


def load_yaml_with_bases(path: Union[str, Path], _seen: Sequence[Path] = (),
                         origins: Optional[Origins] = None) -> Dict[str, Any]:
    """Read ``path`` and deep-merge it over the files its ``_base_`` key names (``origins``,
    when given, learns which file set each key)."""
    label = str(path)
    path = resolve_config_path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    data = _read_yaml(path)
    merged: Dict[str, Any] = {}
    for base in _bases_of(path, data):
        merged = deep_merge(merged, load_yaml_with_bases(base, (*_seen, path), origins))
    data.pop("_base_", None)
    if origins is not None:
        origins.record(data, label)
    return deep_merge(merged, data)


def is_base_file(path: Union[str, Path]) -> bool:
    """A base (``base.yaml``, ``*_base.yaml``): what other configs stand on, not a run of its own."""
    name = Path(path).name
    return name == "base.yaml" or name.endswith("_base.yaml")


def derived_run(path: Union[str, Path]) -> Dict[str, str]:
    """The ``name`` and ``output_dir`` config file ``path`` implies (none for a base file).

    ``configs/experiments/<exp>/<stem>.yaml`` -> ``<exp>/<stem>``, ``configs/<stem>.yaml`` ->
    ``<stem>``, a file anywhere else -> its stem; the run directory is ``runs/<name>``.
    """
    path = resolve_config_path(path).resolve()
    if is_base_file(path):
        return {}
    name = path.stem
    for top in (EXPERIMENTS_DIR, CONFIG_DIR):
        try:
            name = path.relative_to(top.resolve()).with_suffix("").as_posix()
            break
        except ValueError:
            continue
    return {"name": name, "output_dir": f"{RUNS_DIR}/{name}"}


def apply_override(data: Dict[str, Any], assignment: str, origins: Optional[Origins] = None) -> None:
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
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML ({' '.join(str(error).split())})") from None
    if isinstance(node, list):
        node[_list_index(node, keys[-1], dotted)] = value
    else:
        node[keys[-1]] = value
    if origins is not None:
        origins.set(".".join(keys), f"--set {assignment}")


def _list_index(items: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"--set {dotted}: {key!r} is not an index of a list of {len(items)}")
    return int(key)
