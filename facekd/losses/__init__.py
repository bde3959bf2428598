"""Losses: margin heads, triplet (distillation) losses, feature and Hinton distillation.

Every loss is an ``nn.Module`` in the :data:`LOSSES` registry with
``forward(inputs: LossInputs) -> scalar Tensor``:

============================  ==================================================================
``arcface``, ``cosface``      margin-softmax heads with their class centres (:mod:`.margin`)
``teacher_centre_arcface``    ArcFace against the teacher's moving-average class centres (:mod:`.margin`)
``triplet``                   triplet loss with a fixed margin (:mod:`.triplet`)
``triplet_distill``           Triplet Distillation, teacher-adaptive margin (:mod:`.triplet`)
``feature_distill``           HR->LR embedding matching, student vs teacher, through a projector (:mod:`.feature`)
``feature_map_distill``       intermediate feature-map matching via a 1x1 adapter (:mod:`.feature`)
``hinton_kd``                 soft-target KD on margin-free logits (:mod:`.hinton`)
============================  ==================================================================

A config's ``losses:`` list becomes one :class:`WeightedLoss` through :func:`build_losses`.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import numbers
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, READABLE_FIELDS, TEACHER_FIELDS, Loss, LossInputs
from facekd.losses.feature import FeatureDistillLoss, FeatureMapDistillLoss
from facekd.losses.hinton import HintonKDLoss
from facekd.losses.margin import ArcFace, CosFace, MarginHead
from facekd.losses.neuron_selection import NeuronSelectDistillLoss, fisher_ratio, select_neurons  # noqa: F401
from facekd.losses.partial_fc import PartialFC, PartialFCCosFace  # noqa: F401  (registers partial_fc*)
from facekd.losses.triplet import (TripletDistillLoss, TripletLoss, adaptive_margin, mine_triplets,
                                   pairwise_distance)

__all__ = ["LOSSES", "Loss", "LossInputs", "READABLE_FIELDS", "TEACHER_FIELDS", "WeightedLoss", "build_losses",
           "declared_reads", "margin_head_names", "MarginHead", "ArcFace",
           "CosFace", "TripletLoss", "TripletDistillLoss", "FeatureDistillLoss",
           "FeatureMapDistillLoss", "HintonKDLoss", "adaptive_margin", "mine_triplets",
           "pairwise_distance", "CONTEXT_KEYS"]

#: the context arguments a training task may pass to :func:`build_losses`
CONTEXT_KEYS = ("num_classes", "embedding_size", "teacher_embedding_size", "student_channels",
                "teacher_channels", "rank", "world_size")


class WeightedLoss(nn.Module):
    """``total = sum_i weight_i * loss_i`` over the configured terms.

    ``forward(inputs)`` returns ``(total, terms)`` where ``terms`` maps each term's key to its
    *unweighted* value as a detached 0-d tensor (the trainer logs it at log steps only: no host
    sync per term).  Keys are the loss names; a name used twice gets ``_2``, ``_3``... suffixes.  The terms live in the ``terms`` ``ModuleDict`` (so the
    state dict is keyed by name: ``terms.arcface.weight``), and their learnable parameters
    (class centres, projections, adapters) are ``self.parameters()`` — give them to the
    optimiser.

    What the sum reads is the union of what its terms read (:attr:`reads`).  If a term reads
    ``student_logits`` and the step did not supply them, they are computed once from
    :attr:`margin_head` (margin-free ``logits(student_embedding)``).  A term that reads
    ``labels`` sees only the labelled rows of a batch with unlabelled faces
    (:meth:`LossInputs.labelled`); the other terms see every row.

    Attributes:
        terms: ``nn.ModuleDict`` key -> loss module.
        weights: key -> weight.
        specs: key -> the config entry the term was built from (``name``, ``weight``, params).
    """

    def __init__(self, terms: Mapping[str, Loss], weights: Mapping[str, float],
                 specs: Optional[Mapping[str, Dict[str, Any]]] = None) -> None:
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
        for key, term in terms.items():
            if not term.reads <= type(term).reads:
                raise TypeError(f"loss term {key!r} reads {sorted(term.reads - type(term).reads)}, which its "
                                f"class {type(term).__name__} does not declare")
        self.terms = nn.ModuleDict(terms)
        self.weights = {key: float(weights[key]) for key in terms}
        self.specs = {key: dict((specs or {}).get(key, {})) for key in terms}

    @property
    def reads(self) -> FrozenSet[str]:
        """The :class:`LossInputs` fields some term reads (the union of the terms' ``reads``):
        what the training task fills.  ``student_logits`` are filled here from
        :attr:`margin_head` when the task leaves them None."""
        return frozenset().union(*(term.reads for term in self.terms.values()))

    def readers(self, field: str) -> List[str]:
        """The keys of the terms that read ``field`` (for messages)."""
        return [key for key, term in self.terms.items() if field in term.reads]

    @property
    def margin_head(self) -> Optional[MarginHead]:
        """The first margin head (``arcface``/``cosface``) among the terms, or None."""
        return next((t for t in self.terms.values() if isinstance(t, MarginHead)), None)

    @property
    def margin_head_key(self) -> Optional[str]:
        """The key of :attr:`margin_head` in :attr:`terms` (its config entry: ``specs[key]``)."""
        return next((k for k, t in self.terms.items() if isinstance(t, MarginHead)), None)

    def forward(self, inputs: LossInputs) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if inputs.student_logits is None and "student_logits" in self.reads and self.margin_head is not None:
            inputs = dataclasses.replace(
                inputs, student_logits=self.margin_head.logits(inputs.student_embedding))
        total: Optional[torch.Tensor] = None
        values: Dict[str, torch.Tensor] = {}
        labelled = inputs.labelled()
        for key, term in self.terms.items():
            value = term(labelled if "labels" in term.reads else inputs)
            values[key] = value.detach()          # stays on the device: no host sync per term
            weighted = self.weights[key] * value
            total = weighted if total is None else total + weighted
        assert total is not None  # build_losses refuses an empty list
        return total, values

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}: {w:g}" for k, w in self.weights.items())


def _factory_arguments(name: str, where: str, params: Dict[str, Any],
                       context: Mapping[str, Any]) -> Dict[str, Any]:
    """The keyword arguments for loss ``name``: its config ``params`` plus the context
    entries its factory names; unknown or clashing params and missing required context
    raise :class:`ConfigError` naming the entry."""
    signature = inspect.signature(LOSSES.get(name)).parameters
    accepted = {k for k, p in signature.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(f"{where}: loss {name!r} has no parameter(s) {unknown}; "
                          f"it takes {sorted(accepted - set(context) - set(CONTEXT_KEYS))}")
    clashing = sorted(set(params) & (set(context) | set(CONTEXT_KEYS)))
    if clashing:
        raise ConfigError(f"{where}: {clashing} of loss {name!r} come from the models and data, "
                          f"not from the config")
    arguments = dict(params)
    arguments.update({k: v for k, v in context.items() if k in accepted})
    missing = sorted(k for k, p in signature.items()
                     if k in accepted and p.default is p.empty and k not in arguments)
    if missing:
        raise ConfigError(f"{where}: loss {name!r} needs {missing}, which this run does not "
                          f"provide (is the loss meant for this kind of training?)")
    return arguments


def build_losses(specs: Sequence[Mapping[str, Any]], **context: Any) -> WeightedLoss:
    """Build the :class:`WeightedLoss` of a config's ``losses:`` list.

    Args:
        specs: entries ``{name: <LOSSES name>, weight: float (default 1.0), **params}``,
            e.g. ``[{"name": "arcface", "weight": 1.0, "scale": 64.0, "margin": 0.5},
            {"name": "triplet_distill", "weight": 1.0, "m_min": 0.2, "m_max": 0.5}]``.
        **context: facts about the run that factories may need: ``num_classes``,
            ``embedding_size``, ``teacher_embedding_size``, ``student_channels``,
            ``teacher_channels``, and the process's ``rank`` of ``world_size`` (a sharded
            head) (:data:`CONTEXT_KEYS`).  Each factory receives only the
            entries its signature names; None values are passed as given.

    Raises:
        ConfigError: an empty list, an entry without a name, an unknown loss name, a
            parameter the loss does not take (or one that belongs to the context), a
            non-numeric weight, missing context, or an invalid parameter value — the message
            names the entry (``losses[i]``) and the loss.
    """
    if not specs:
        raise ConfigError("losses: the list is empty; at least one loss is needed")
    terms: Dict[str, Loss] = {}
    weights: Dict[str, float] = {}
    kept: Dict[str, Dict[str, Any]] = {}
    for index, spec in enumerate(specs):
        where = f"losses[{index}]"
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"{where}: expected a mapping with a 'name', got {spec!r}")
        params = dict(spec)
        name = params.pop("name")
        weight = params.pop("weight", 1.0)
        if name not in LOSSES:
            raise ConfigError(f"{where}: unknown loss {name!r}; known: {', '.join(LOSSES)}")
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
            raise ConfigError(f"{where}: weight of loss {name!r} must be a number, got {weight!r}")
        arguments = _factory_arguments(name, where, params, context)
        try:
            term = LOSSES.build(name, **arguments)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        key, suffix = name, 1
        while key in terms:
            suffix += 1
            key = f"{name}_{suffix}"
        terms[key], weights[key], kept[key] = term, float(weight), copy.deepcopy(dict(spec))
    return WeightedLoss(terms, weights, kept)


def declared_reads(specs: Sequence[Mapping[str, Any]]) -> FrozenSet[str]:
    """What the losses of a ``losses:`` list read, from their classes' declarations (before
    they are built: e.g. whether a teacher must be loaded to size them).  Entries that are
    not registered losses are left to :func:`build_losses` to report."""
    names = [spec.get("name") for spec in specs if isinstance(spec, Mapping)]
    return frozenset().union(*(LOSSES.get(name).reads for name in names if name in LOSSES))


def margin_head_names() -> List[str]:
    """The registered losses that are margin heads (they give the student its logits)."""
    return [name for name in LOSSES if issubclass(LOSSES.get(name), MarginHead)]
