"""Typed per-sample records: one frozen dataclass, built from the attack result, never a dict literal.

A ``SampleRecord`` is what a suite writes for one sample under one defense, setting, threat
and budget: either an invalid sample (``attack`` "-": the behaviour was absent undefended or
already present defended, so there is nothing to recover) or the cascade's outcome on a
valid one. The record store keeps ``to_dict()``; summaries and checks read those fields:

- key: ``setting``, ``defense``, ``budget``, ``sample_id``, ``attack``, ``seed``
- ``present`` (behaviour shown undefended), ``valid`` (present and suppressed by the defense)
- ``recovered`` (verified by an independent forward, unflagged), ``stage`` (the cascade stage
  that recovered it, ``"none"`` if none did), ``stage_scores`` / ``stage_steps`` per stage run
- ``grad_norm`` (projected gradient norm at the first gradient step; zero means no signal),
  ``claim_refused`` (a stage claimed a success the independent check refused),
  ``flagged`` (a detector flagged the final input), ``binds`` (the defense's output or
  verdict at the attacked point differs from the reference defense's: False everywhere
  means the defense is inactive on these samples)
- ``drift``, ``rel_delta_norm``, ``reactivation``, ``floor_violation``, ``steps``
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from attacks.runner import CascadeOutcome
from guard.errors import ToolkitError

RECORD_VERSION = 2


def _num(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class SampleRecord:
    """One sample under one (defense, setting, threat, budget); see the module docstring."""

    setting: str
    defense: str
    budget: float
    seed: int
    sample_id: str
    attack: str
    threat: str
    site: str
    constraint: str
    present: bool | None
    valid: bool | None
    recovered: bool | None = None
    stage: str | None = None
    score_undefended: float | None = None
    score_defended: float | None = None
    score_attacked: float | None = None
    grad_norm: float | None = None
    claim_refused: bool | None = None
    flagged: bool | None = None
    binds: bool | None = None
    drift: float | None = None
    rel_delta_norm: float | None = None
    reactivation: float | None = None
    floor_violation: float | None = None
    steps: int | None = None
    stage_scores: dict[str, float] = field(default_factory=dict)
    stage_steps: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: ``extra``'s setting-specific fields sit beside the common ones."""
        data = asdict(self)
        extra = data.pop("extra")
        clash = set(extra) & set(data)
        if clash:
            raise ToolkitError(f"record extra fields {sorted(clash)} shadow common record fields")
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        version = data.get("version")
        if version != RECORD_VERSION:
            raise ToolkitError(f"record of version {version!r}; this toolkit reads record version {RECORD_VERSION}")
        names = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**{k: v for k, v in data.items() if k in names}, extra=extra)

    @classmethod
    def invalid(cls, *, present: bool, score_undefended: float, score_defended: float,
                **key: Any) -> SampleRecord:
        """A sample with nothing to recover (behaviour absent undefended, or not suppressed)."""
        return cls(**key, attack="-", present=present, valid=False, score_undefended=score_undefended,
                   score_defended=score_defended)

    @classmethod
    def from_outcome(cls, outcome: CascadeOutcome, row: int, *, score_undefended: float, binds: bool | None,
                     extra: dict[str, Any] | None = None, **key: Any) -> SampleRecord:
        """The cascade's outcome on row ``row`` of its batch (a valid sample)."""
        r = outcome.result
        recovered = bool(r.success[row])
        return cls(
            **key, attack="cascade", present=True, valid=True, recovered=recovered,
            stage=outcome.stage[row] if recovered else "none",
            score_undefended=score_undefended, score_defended=_num(r.defended_score[row]),
            score_attacked=_num(r.score[row]), grad_norm=_num(r.grad_norm[row]),
            claim_refused=bool(r.claimed[row] and not r.success[row]), flagged=bool(r.flagged[row]),
            binds=binds, drift=_num(r.drift[row]), rel_delta_norm=_num(r.relative_norm[row]),
            reactivation=_num(r.reactivation[row]), floor_violation=_num(r.floor_violation[row]),
            steps=int(r.steps[row]), stage_scores=dict(outcome.stage_scores[row]),
            stage_steps=dict(outcome.stage_steps[row]), extra=dict(extra or {}),
        )
