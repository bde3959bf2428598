"""Checks of a training config that need facekd's registries, made before any data or teacher loads.

:func:`facekd.config.load_config` checks types, ranges and the rules between fields; what only
the registries know is checked here, so that a typo fails in a second, not after the teacher
cache is built:

* every name is registered: ``model.name``, ``optim.optimizer``, ``optim.scheduler``,
  ``train.amp``, ``train.compile_mode``, ``data.source``, each ``val.sets.<i>.kind`` and, for a
  student, the teacher's ``kind``, ``targets``, ``cache_dtype``, framing ``template`` / ``channel_order``, ``backend``
  and (kind ``torch``) ``model.name``; ``model.params`` are arguments the model takes and every
  val set but a synthetic one has a path;
* every ``augment:`` entry builds, and every ``losses:`` entry builds on a stand-in of the run's
  context (:func:`stand_in_context`): a parameter whose default is a number is a finite number
  (not ``true``), the weight is >= 0;
* ``init_from``, when a checkpoint path, names an existing file.

What depends on the data or the teacher's file (identities per batch on folder data, the
teacher's real embedding size) is checked where they are loaded.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Dict, Optional

from facekd.config import MAX_EMBEDDING_SIZE, ExperimentConfig, Origins
from facekd.errors import ConfigError


def stand_in_context(cfg: ExperimentConfig) -> Dict[str, Any]:
    """The loss context (:data:`facekd.losses.CONTEXT_KEYS`) before data and teacher are loaded.

    The student's embedding size is known; the number of identities, the feature-map channels
    and the teacher's embedding size (a teacher checkpoint's own ``model_config`` overrides
    ``teacher.model``) stand in as 2, 1 and the largest embedding size allowed, so only a
    parameter that is wrong whatever they turn out to be is refused here.
    """
    return {"num_classes": 2, "embedding_size": cfg.model.embedding_size,
            "teacher_embedding_size": MAX_EMBEDDING_SIZE, "student_channels": 1, "teacher_channels": 1}


def check_run(cfg: ExperimentConfig, task_name: str, origins: Optional[Origins] = None) -> None:
    """Refuse unregistered names and ``augment:`` / ``losses:`` entries that cannot build.

    ``task_name`` is ``teacher`` or ``student`` (a teacher run ignores the ``teacher:`` section).
    Raises :class:`ConfigError` naming the key and, with ``origins``, where it was set.
    """
    origins = origins or Origins("config")
    _check_names(cfg, task_name, origins)
    _check_augment(cfg, origins)
    _check_losses(cfg, origins)
    if cfg.init_from not in (None, "teacher") and not os.path.isfile(cfg.init_from):
        _refuse(origins, "init_from", f"init_from: {cfg.init_from}: no such checkpoint file")


def _refuse(origins: Origins, key: str, problem: str) -> None:
    raise ConfigError(f"{origins.last_within(key)}: {problem}")


def _check_names(cfg: ExperimentConfig, task_name: str, origins: Origins) -> None:
    from facekd.data.sources import PAIR_SOURCES, TRAIN_SOURCES
    from facekd.models import MODELS
    from facekd.precision import AMP_DTYPES
    from facekd.training.trainer import COMPILE_MODES
    from facekd.training.optim import OPTIMIZERS, SCHEDULES

    names = [("model.name", cfg.model.name, MODELS), ("optim.optimizer", cfg.optim.optimizer, OPTIMIZERS),
             ("optim.scheduler", cfg.optim.scheduler, SCHEDULES), ("train.amp", cfg.train.amp, AMP_DTYPES),
             ("data.source", cfg.data.source, TRAIN_SOURCES),
             ("train.compile_mode", cfg.train.compile_mode, COMPILE_MODES)]
    names += [(f"val.sets.{i}.kind", spec.kind, PAIR_SOURCES) for i, spec in enumerate(cfg.val.sets)]
    teacher = cfg.teacher if task_name == "student" else None
    if teacher is not None:
        from facekd.teachers import TEACHER_BACKENDS, TEACHERS, TEMPLATES
        from facekd.training.teacher_cache import DTYPES
        from facekd.training.teaching import TEACHING

        names += [("teacher.kind", teacher.kind, TEACHERS), ("teacher.targets", teacher.targets, TEACHING),
                  ("teacher.cache_dtype", teacher.cache_dtype, DTYPES)]
        names += [(key, value, known) for key, value, known in (
            ("teacher.framing.template", teacher.framing.template, TEMPLATES),
            ("teacher.framing.channel_order", teacher.framing.channel_order, ("RGB", "BGR")),
            ("teacher.backend", teacher.backend, TEACHER_BACKENDS.get(teacher.kind, ()))) if value is not None]
        if teacher.kind == "torch":
            names.append(("teacher.model.name", teacher.model.name, MODELS))
        if teacher.backend is not None and teacher.kind not in TEACHER_BACKENDS:
            _refuse(origins, "teacher.backend", f"teacher.backend: kind {teacher.kind} runs on one engine; "
                                                f"backend applies to kinds {', '.join(TEACHER_BACKENDS)}")
    for key, value, known in names:
        if value not in known:
            _refuse(origins, key, f"{key} must be one of {', '.join(known)}; got {value!r}")
    try:
        MODELS.check_arguments(cfg.model.name, cfg.model.params)
    except TypeError as error:
        _refuse(origins, "model.params", f"model.params: {error}")
    for i, spec in enumerate(cfg.val.sets):
        if spec.path is None and spec.kind != "synthetic":
            _refuse(origins, f"val.sets.{i}.path", f"val.sets.{i}.path: a {spec.kind} set needs a path")


def _check_augment(cfg: ExperimentConfig, origins: Origins) -> None:
    from facekd.data.augment import build_augment

    try:
        build_augment(cfg.augment)
    except ConfigError as error:
        _refuse(origins, "augment", str(error))
    except (TypeError, ValueError, ArithmeticError) as error:     # a parameter of the wrong kind
        _refuse(origins, "augment", f"augment: {error}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _numeric_defaults(name: Any) -> Dict[str, Any]:
    """The parameters of loss ``name`` whose default is a number (plus ``weight``): they take numbers only."""
    import inspect

    from facekd.losses import LOSSES

    if not isinstance(name, str) or name not in LOSSES:
        return {}
    params = inspect.signature(LOSSES.get(name)).parameters
    return {"weight": 1.0, **{k: p.default for k, p in params.items() if _is_number(p.default)}}


def _check_losses(cfg: ExperimentConfig, origins: Origins) -> None:
    from facekd.losses import LOSSES, build_losses

    if not cfg.losses:
        _refuse(origins, "losses", "losses: the list is empty; at least one loss is needed")
    context = stand_in_context(cfg)
    for index, spec in enumerate(cfg.losses):
        where = f"losses.{index}"
        defaults = _numeric_defaults(spec.get("name")) if isinstance(spec, dict) else {}
        for param, value in (spec.items() if isinstance(spec, dict) else ()):
            if param in defaults and not _is_number(value):
                _refuse(origins, f"{where}.{param}", f"{where}.{param} must be a number, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                _refuse(origins, f"{where}.{param}", f"{where}.{param} must be a finite number, got {value}")
        weight = spec.get("weight", 1.0) if isinstance(spec, dict) else 1.0
        if _is_number(weight) and weight < 0:
            _refuse(origins, f"{where}.weight", f"{where}.weight must be >= 0, got {weight}")
        name = spec.get("name") if isinstance(spec, dict) else None
        in_teacher_space = (isinstance(name, str) and name in LOSSES
                            and getattr(LOSSES.get(name), "in_teacher_space", False))
        try:   # a loss of the teacher's space needs the student's size: the teacher's stands in as that
            build_losses([spec], **{**context, "teacher_embedding_size": context["embedding_size"]}
                         if in_teacher_space else context)
        except ConfigError as error:
            _refuse(origins, where, f"{where}: {str(error).replace('losses[0]: ', '', 1)}")
        except (TypeError, ValueError, ArithmeticError) as error:     # a parameter of the wrong kind
            _refuse(origins, where, f"{where}: loss {spec.get('name')!r} cannot take these parameters ({error})")


def check_batch_fits(labels: Any, train_cfg: Any) -> None:
    """Refuse a P x K batch the training data cannot fill (checked as soon as the data is listed,
    before the teacher loads): fewer than P identities, or no identity with K images (every
    batch would repeat each image)."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1)) if len(labels) else np.zeros(0, int)
    identities, most = int((counts > 0).sum()), int(counts.max(initial=0))
    P, K = train_cfg.identities_per_batch, train_cfg.images_per_identity
    if identities < P:
        raise ConfigError(f"train.identities_per_batch={P}: the training data has {identities} identities, "
                          "too few for one P x K batch")
    if most < K:
        raise ConfigError(f"train.images_per_identity={K}: no identity of the training data has that many "
                          f"images (at most {most}), so every batch would repeat each image")
