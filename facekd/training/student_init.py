"""Start a student from its teacher's weights ("transfer, then distil").

After Karlekar, Feng, Pranata and Yan, "Deep Face Recognition Model Compression via
Knowledge Transfer and Distillation" (2019): the low-resolution student keeps the teacher's
architecture, is initialised with the teacher's weights, and is then distilled on
low-resolution faces against the teacher's features of the high-resolution ones.

In facekd a low-resolution face is a degraded view at the *same* input size (``degrade:``
shrinks the face and scales it back up to the model's input), so the student and teacher
must agree on ``input_size`` too: the final layer depends on it (IResNet's ``fc`` flattens a
``ceil(input_size / 16)^2`` map, MobileFaceNet's GDConv kernel is ``ceil(input_size / 16)``),
and a copy at another input size would need that layer re-initialised, i.e. it would not
be the teacher any more.  Such a request is refused with a :class:`~facekd.errors.ConfigError`.
"""
from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

from facekd.config import ModelConfig
from facekd.errors import ConfigError

#: model ``params`` that change no weight and may differ between student and teacher
WEIGHT_FREE_PARAMS = ("dropout",)


def architecture_differences(student_cfg: ModelConfig, other_cfg: ModelConfig, other: str = "teacher") -> List[str]:
    """What differs between two model configs in a way that changes the weights.

    Compares ``name``, ``embedding_size``, ``input_size`` and the factory ``params`` (except
    :data:`WEIGHT_FREE_PARAMS`).

    Returns:
        One ``"field: student X, <other> Y"`` line per difference (empty when they match);
        ``other`` names the second config (the teacher, a checkpoint).
    """
    differences = [f"{key}: student {getattr(student_cfg, key)!r}, {other} {getattr(other_cfg, key)!r}"
                   for key in ("name", "embedding_size", "input_size")
                   if getattr(student_cfg, key) != getattr(other_cfg, key)]
    student_params = _weight_params(student_cfg)
    other_params = _weight_params(other_cfg)
    for key in sorted(set(student_params) | set(other_params)):
        mine, theirs = student_params.get(key, "<default>"), other_params.get(key, "<default>")
        if mine != theirs:
            differences.append(f"params.{key}: student {mine!r}, {other} {theirs!r}")
    return differences


def _weight_params(cfg: ModelConfig) -> Dict[str, Any]:
    params = dict(getattr(cfg, "params", None) or {})
    for key in ("width",):                           # a list in YAML, a tuple in code: same width
        if isinstance(params.get(key), (list, tuple)):
            params[key] = tuple(params[key])
    return {k: v for k, v in params.items() if k not in WEIGHT_FREE_PARAMS}


def init_student_from_teacher(student: nn.Module, student_cfg: ModelConfig, teacher_backbone: nn.Module,
                              teacher_cfg: ModelConfig) -> None:
    """Copy the teacher backbone's weights (parameters and BN statistics) into ``student``.

    Afterwards the student computes exactly the teacher's function (same outputs on the same
    input in eval mode); its tensors are copies, so training it leaves the teacher alone, and
    its own ``requires_grad`` settings are kept (the teacher is usually frozen).

    Args:
        student: the student backbone, built from ``student_cfg``.
        student_cfg: the student's ``ModelConfig`` (``cfg.model``).
        teacher_backbone: the teacher backbone (e.g. ``FrozenTeacher.backbone``).
        teacher_cfg: the teacher's actual ``ModelConfig`` (e.g. ``FrozenTeacher.model_config``,
            which follows the checkpoint's ``model_config`` when it has one).

    Raises:
        ConfigError: the two configs describe different architectures (the message lists
            each difference with both values; see :func:`architecture_differences`), or the
            modules' state dicts do not match (keys or shapes) despite matching configs.
    """
    differences = architecture_differences(student_cfg, teacher_cfg)
    if differences:
        raise ConfigError("student.init_from teacher needs the student to have the teacher's architecture "
                          f"(student {student_cfg.name!r}, teacher {teacher_cfg.name!r}); they differ in "
                          + "; ".join(differences)
                          + ". Low resolution is simulated by degrade: at the same input_size.")
    own = student.state_dict()
    source = teacher_backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(source)), sorted(set(source) - set(own))
    shapes = [f"{k}: student {tuple(own[k].shape)}, teacher {tuple(source[k].shape)}"
              for k in sorted(set(own) & set(source)) if own[k].shape != source[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"student.init_from teacher: the student {student_cfg.name!r} and teacher "
                          f"{teacher_cfg.name!r} modules do not match: missing in teacher {missing[:8]}, "
                          f"not in student {unexpected[:8]}, shape differences {shapes[:8]}")
    student.load_state_dict(source)
