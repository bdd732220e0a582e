"""Threat models: where an attacker may perturb, how far, and under which constraint.

A ``ThreatModel`` is a frozen, serialisable description (sites, positions, norm, budget,
constraint). Strings and enums are normalised once here; attacks never branch on strings.
``ThreatModel.bind(defense, model)`` resolves it against a concrete defense (encoder
projectors, monitored downstream latents) into a ``BoundThreat`` whose ``project`` maps any
delta into the feasible set.

Example::

    threat = ThreatModel.make(sites="blocks.12.hook_resid_post", positions="last",
                              budget=0.5, relative=True, constraint="encoder")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, ClassVar

import torch

from attacks.batch import AttackBatch
from attacks.projection import EncoderProjector, encoder_projector, project_budget
from guard.base import DefendedLatents, Defense
from guard.errors import ToolkitError, unknown_name
from guard.named import Registry


class Norm(StrEnum):
    L2 = "l2"
    LINF = "linf"


class Scope(StrEnum):
    POSITION = "position"  # one ball per example and position
    EXAMPLE = "example"  # one ball per example over all its perturbed positions


class PositionKind(StrEnum):
    LAST = "last"  # the last real token of each row
    SET = "set"  # explicit positions; negative counts back from the last real token (-1 = last)
    ANSWER = "answer"  # positions whose outputs predict the answer: [prompt_len - 1, length - 1)
    ALL = "all"  # every real token
    PROMPT = "prompt"  # prompt tokens after the first: [1, prompt_len) (position 0 is the attention sink)
    TAIL = "tail"  # indices (k, keep): the k prompt tokens before the prompt's last ``keep`` (an inserted suffix)


def _enum(cls: type[Enum], value: str | Enum, what: str) -> Enum:
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        raise unknown_name(what, str(value), [m.value for m in cls], "threat model") from None


@dataclass(frozen=True)
class Positions:
    """Which token positions carry a perturbation; resolves to a bool mask per batch."""

    kind: PositionKind = PositionKind.LAST
    indices: tuple[int, ...] = ()

    @classmethod
    def make(cls, spec: str | PositionKind | Sequence[int] | Positions) -> Positions:
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, str | PositionKind):
            kind = _enum(PositionKind, spec, "position kind")
            if kind is PositionKind.SET:
                raise ToolkitError("threat model: positions 'set' needs explicit indices, e.g. positions=[-1, -2]")
            if kind is PositionKind.TAIL:
                raise ToolkitError("threat model: positions 'tail' needs counts; use Positions.tail(k, keep)")
            return cls(kind)
        indices = tuple(int(i) for i in spec)
        if not indices:
            raise ToolkitError("threat model: empty position set")
        return cls(PositionKind.SET, indices)

    @classmethod
    def tail(cls, k: int, keep: int = 0) -> Positions:
        """The ``k`` prompt positions that end ``keep`` tokens before the prompt does."""
        if k < 1 or keep < 0:
            raise ToolkitError(f"threat model: tail positions need k >= 1 and keep >= 0, got k={k}, keep={keep}")
        return cls(PositionKind.TAIL, (int(k), int(keep)))

    def resolve(self, batch: AttackBatch) -> torch.Tensor:
        """bool [batch, pos]: positions perturbed in each row (never pads)."""
        n, t = batch.tokens.shape
        pos = torch.arange(t, device=batch.tokens.device)[None].expand(n, t)
        valid = batch.valid()
        if self.kind is PositionKind.LAST:
            mask = pos == batch.last()[:, None]
        elif self.kind is PositionKind.ALL:
            mask = valid
        elif self.kind is PositionKind.PROMPT:
            mask = (pos >= 1) & (pos < batch.answer_start()[:, None])
        elif self.kind is PositionKind.TAIL:
            k, keep = self.indices
            end = (batch.lengths if batch.prompt_lengths is None else batch.prompt_lengths)[:, None] - keep
            mask = (pos >= end - k) & (pos < end)
        elif self.kind is PositionKind.ANSWER:
            start = batch.answer_start()[:, None] - 1
            mask = (pos >= start) & (pos < batch.lengths[:, None] - 1)
            mask |= (pos == start) & (start == batch.lengths[:, None] - 1)  # empty answer: keep the last token
        else:
            mask = torch.zeros(n, t, dtype=torch.bool, device=pos.device)
            for i in self.indices:
                absolute = torch.full((n,), i, device=pos.device) if i >= 0 else batch.lengths + i
                mask |= pos == absolute[:, None]
        mask &= valid
        if not mask.any(dim=1).all():
            bad = (~mask.any(dim=1)).nonzero().flatten().tolist()
            raise ToolkitError(f"threat model: positions {self.to_dict()} select no token in rows {bad[:10]}")
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "indices": list(self.indices)}


@dataclass(frozen=True)
class Constraint:
    """Base of the constraint configs; ``name`` is the registered key."""

    name: ClassVar[str] = "constraint"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class NoConstraint(Constraint):
    """Any delta inside the budget (the unconstrained baseline)."""

    name: ClassVar[str] = "none"


@dataclass(frozen=True)
class EncoderOrthogonal(Constraint):
    """``W_enc[:, S]^T delta = 0`` at each perturbed site: the defended latents there cannot move.

    Exact for SAEs with elementwise activation (ReLU, JumpReLU); TopK SAEs can still change.
    """

    name: ClassVar[str] = "encoder"


class CrossLayerMethod(StrEnum):
    JACOBIAN = "jacobian"  # exact linearised projection off the Jacobian's row space + restoration step
    LAGRANGIAN = "lagrangian"  # augmented Lagrangian on relative drift <= threshold


@dataclass(frozen=True)
class CrossLayer(Constraint):
    """Encoder-orthogonal at the perturbed sites AND the defended latents at every downstream
    defended site and position stay put (relative drift <= ``drift_threshold``).

    ``jacobian``: each step computes the Jacobian of the downstream defended latents with
    respect to delta by batched vector-Jacobian products, projects the update off its row
    space and adds a Gauss-Newton restoration step. ``lagrangian``: augmented Lagrangian
    with per-example multipliers. Either way an example only counts as recovered when its
    measured drift is within the threshold.
    """

    name: ClassVar[str] = "cross_layer"
    method: CrossLayerMethod = CrossLayerMethod.JACOBIAN
    drift_threshold: float = 0.05
    penalty: float = 10.0  # initial augmented-Lagrangian penalty (lagrangian only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _enum(CrossLayerMethod, self.method, "cross-layer method"))
        if not self.drift_threshold >= 0:
            raise ToolkitError(f"cross-layer constraint: drift_threshold must be >= 0, got {self.drift_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method.value, "drift_threshold": self.drift_threshold,
                "penalty": self.penalty}


CONSTRAINTS: Registry[type[Constraint]] = Registry("constraint")
for _constraint in (NoConstraint, EncoderOrthogonal, CrossLayer):
    CONSTRAINTS.add(_constraint.name, _constraint)


def make_constraint(spec: str | Constraint | dict[str, Any]) -> Constraint:
    if isinstance(spec, Constraint):
        return spec
    data = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = CONSTRAINTS.check(str(data.pop("name")).lower(), "threat model")
    return CONSTRAINTS[name](**data)


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker controls.

    Arguments:
        sites: full hook names of the perturbed residual sites (``hook_resid_pre`` / ``hook_resid_post``).
        positions: ``Positions`` (last, a set, all answer positions, all).
        norm: ``l2`` or ``linf``.
        budget: radius; relative budgets multiply the norm of the defended residual at the
            site (L2 norm for ``l2``, max-abs for ``linf``), per example and position
            (scope ``position``) or over the example's perturbed positions (scope ``example``).
        relative: whether ``budget`` is relative.
        scope: ``position`` or ``example``.
        constraint: ``NoConstraint``, ``EncoderOrthogonal`` or ``CrossLayer``.
    """

    sites: tuple[str, ...]
    positions: Positions = field(default_factory=Positions)
    norm: Norm = Norm.L2
    budget: float = 0.5
    relative: bool = True
    scope: Scope = Scope.POSITION
    constraint: Constraint = field(default_factory=EncoderOrthogonal)

    def __post_init__(self) -> None:
        if not self.sites:
            raise ToolkitError("threat model: no perturbation site given")
        if len(set(self.sites)) != len(self.sites):
            raise ToolkitError(f"threat model: repeated site in {self.sites}")
        if not self.budget >= 0:
            raise ToolkitError(f"threat model: budget must be >= 0, got {self.budget}")

    @classmethod
    def make(
        cls,
        sites: str | Sequence[str],
        positions: str | Sequence[int] | Positions = "last",
        norm: str | Norm = "l2",
        budget: float = 0.5,
        relative: bool = True,
        scope: str | Scope = "position",
        constraint: str | Constraint | dict[str, Any] = "encoder",
    ) -> ThreatModel:
        """The one place strings become typed values."""
        return cls(
            sites=(sites,) if isinstance(sites, str) else tuple(sites),
            positions=Positions.make(positions),
            norm=_enum(Norm, norm, "norm"),
            budget=float(budget),
            relative=bool(relative),
            scope=_enum(Scope, scope, "budget scope"),
            constraint=make_constraint(constraint),
        )

    def with_budget(self, budget: float) -> ThreatModel:
        return ThreatModel(self.sites, self.positions, self.norm, float(budget), self.relative, self.scope,
                           self.constraint)

    def with_constraint(self, constraint: str | Constraint | dict[str, Any]) -> ThreatModel:
        return ThreatModel(self.sites, self.positions, self.norm, self.budget, self.relative, self.scope,
                           make_constraint(constraint))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "positions": self.positions.to_dict(),
            "norm": self.norm.value,
            "budget": self.budget,
            "relative": self.relative,
            "scope": self.scope.value,
            "constraint": self.constraint.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThreatModel:
        pos = data.get("positions", {"kind": "last"})
        positions = Positions(PositionKind(pos["kind"]), tuple(pos.get("indices", ())))
        return cls.make(data["sites"], positions, data.get("norm", "l2"), data.get("budget", 0.5),
                        data.get("relative", True), data.get("scope", "position"),
                        data.get("constraint", "encoder"))

    def bind(self, defense: Defense, model) -> BoundThreat:
        return BoundThreat(self, defense, model)


def site_order(model, site: str) -> int:
    """Forward order of a hook point (its index in the model's hook_dict)."""
    names = list(model.hook_dict)
    if site not in model.hook_dict:
        raise unknown_name("hook name", site, names, "threat model")
    return names.index(site)


class BoundThreat:
    """A threat model resolved against one defense and model: projectors, monitored latents.

    ``project(site, delta, mask, radius)`` returns the feasible delta: linear constraint
    (applied twice, so float error does not accumulate), then the budget. For L2 this is the
    exact Euclidean projection onto (subspace ∩ ball); for Linf with a linear constraint it
    is a feasible point (subspace projection, then uniform shrink into the box).
    """

    def __init__(self, threat: ThreatModel, defense: Defense, model) -> None:
        self.threat = threat
        self.defense = defense
        self.model = model
        self.sites = tuple(sorted(threat.sites, key=lambda s: site_order(model, s)))
        for site in self.sites:
            if not (site.endswith("hook_resid_pre") or site.endswith("hook_resid_post")):
                raise ToolkitError(f"threat model: site {site!r} is not a residual-stream site "
                                   "(hook_resid_pre / hook_resid_post)")
        latents = defense.defended_latents()
        self.projectors: dict[str, EncoderProjector | None] = {}
        constrained = not isinstance(threat.constraint, NoConstraint)
        for site in self.sites:
            here = [d for d in latents if d.site == site]
            if constrained and not here and isinstance(threat.constraint, EncoderOrthogonal):
                raise ToolkitError(
                    f"threat model: encoder-orthogonal constraint at {site!r}, but defense {defense.name!r} "
                    f"pins no latents there (it pins latents at {sorted({d.site for d in latents})})"
                )
            self.projectors[site] = encoder_projector(here) if constrained and here else None
        first = site_order(model, self.sites[0])
        # Defended latents downstream of (or at) the first perturbed site: what drift measures.
        self.monitored: tuple[DefendedLatents, ...] = tuple(
            sorted((d for d in latents if site_order(model, d.site) >= first), key=lambda d: site_order(model, d.site))
        )

    @property
    def constraint(self) -> Constraint:
        return self.threat.constraint

    def project(self, site: str, delta: torch.Tensor, mask: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Feasible delta [batch, pos, d_model] for ``site``; ``radius`` per row [batch] or [batch, pos]."""
        delta = delta * mask[..., None].to(delta.dtype)
        projector = self.projectors[site]
        if projector is not None:
            delta = projector(projector(delta))
        return project_budget(delta, mask, radius, self.threat.norm.value, self.threat.scope.value,
                              linear=projector is not None)

    def radius(self, site: str, resid_def: torch.Tensor, mask: torch.Tensor,
               budget: torch.Tensor | None = None) -> torch.Tensor:
        """Budget radius per example [batch] (scope example) or per position [batch, pos].

        ``budget`` optionally overrides the threat's budget per example (float [batch]).
        """
        b = torch.full((resid_def.shape[0],), self.threat.budget, dtype=resid_def.dtype, device=resid_def.device)
        if budget is not None:
            b = budget.to(resid_def)
        if not self.threat.relative:
            if self.threat.scope is Scope.POSITION:
                return b[:, None].expand(resid_def.shape[:2]).clone()
            return b
        ref = resid_def.norm(dim=-1) if self.threat.norm is Norm.L2 else resid_def.abs().amax(dim=-1)
        if self.threat.scope is Scope.POSITION:
            return b[:, None] * ref
        m = mask.to(ref.dtype)
        pooled = (ref.square() * m).sum(dim=1).sqrt() if self.threat.norm is Norm.L2 else (ref * m).amax(dim=1)
        return b * pooled
