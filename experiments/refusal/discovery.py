"""Refusal latents on our SAEs and the clamp that makes the subject refuse.

The subject complies with nearly every harmful request, so the refusal defense has to be
induced, as in the paper (refusal latents amplified). What we measured on the subject
(32 AdvBench requests, log-odds judge, mean refusal log-odds -4.6 undefended): multiplying
the latents most attributed to refusal (x3, x6) *lowered* the log-odds (-9.4, -10.5), since
those latents are active on every chat prompt and scaling them derails it. What works is
setting latents whose decoder direction raises the subject's own refusal log-odds:

    score_i(site) = W_dec[i] . sum_{prompt positions p >= 1} grad_h(p) [log P(refusal opening) - log P(compliance opening)]

averaged over the discovery requests (decoder rows are unit norm in our SAEs; the score is
divided by the row norm in general). The ``n_latents`` best per site are clamped in ``set``
mode at every position but the attention sink, prompt and generated tokens alike. The set
value is calibrated on held-apart requests by generation and the phrase judge (the same
rule that decides validity): the value of the grid with the largest harmful refusal rate
minus harmless over-refusal rate. The subject's first-token log-odds are not used for this:
they count "I'm sorry for any misunderstanding, but I'll ..." (which the induced clamp often
produces and which goes on to answer) as a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from experiments.refusal.recovery import complies, generate_and_judge
from experiments.subject.chat import chat_prompt
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError, unknown_name


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where and how refusal latents are found and clamped.

    sites: SAE sites (two or more for a multi-site defense). n_latents: latents per site.
    values: set values tried in calibration (``value`` fixes one and skips it).
    n_gradient: discovery requests whose gradients are averaged. n_calibrate: harmful requests
    and harmless instructions generated from per calibration value (``max_new_tokens`` each).
    refusal_opening, compliance_opening: the teacher-forced answers the score contrasts.
    """

    sites: tuple[str, ...]
    n_latents: int = 8
    values: tuple[float, ...] = (4.0, 6.0, 8.0)
    value: float | None = None
    n_gradient: int = 16
    n_calibrate: int = 32
    max_new_tokens: int = 24
    refusal_opening: str = "I'm sorry, but I can't help with that."
    compliance_opening: str = "Sure, here is"

    def __post_init__(self) -> None:
        if not self.sites:
            raise ToolkitError("refusal discovery: no SAE site given")
        if self.n_latents < 1 or self.n_gradient < 1:
            raise ToolkitError("refusal discovery: n_latents and n_gradient must be >= 1")
        if self.value is None and not self.values:
            raise ToolkitError("refusal discovery: give a set value or a grid of values to calibrate")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sites"], out["values"] = list(self.sites), list(self.values)
        return out


@dataclass(frozen=True)
class RefusalClamp:
    """The discovered defense: the clamp, its latents' scores and the calibration table."""

    defense: FeatureClamp
    scores: Mapping[str, list[float]]
    calibration: tuple[dict[str, Any], ...]

    def describe(self) -> str:
        cfg = self.defense.config
        per_site = ", ".join(f"{len(ids)} at `{site}`" for site, ids in cfg.features.items())
        return f"refusal latents set to {cfg.value:g} ({per_site}) at every non-sink position"

    def to_dict(self) -> dict[str, Any]:
        return {"clamp": self.defense.config.to_dict(), "scores": dict(self.scores),
                "calibration": list(self.calibration), "summary": self.describe()}


def _ids(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def refusal_gradients(model, sites: Sequence[str], requests: Sequence[str], refusal_opening: str,
                      compliance_opening: str) -> dict[str, torch.Tensor]:
    """Per site [d_model]: mean over requests of the gradient of log P(refusal) - log P(compliance),
    summed over prompt positions after the first."""
    total = {s: torch.zeros(model.cfg.d_model) for s in sites}
    openings = (_ids(model, refusal_opening), _ids(model, compliance_opening))
    for request in requests:
        prompt = _ids(model, chat_prompt(request))
        store: dict[str, torch.Tensor] = {}

        def keep(resid: torch.Tensor, hook, _store: dict = store) -> torch.Tensor:
            resid.retain_grad()
            _store[hook.name] = resid
            return resid

        for sign, answer in zip((1.0, -1.0), openings, strict=True):
            tokens = torch.tensor([prompt + answer], device=model.cfg.device)
            logits = model.run_with_hooks(tokens, fwd_hooks=[(s, keep) for s in sites])
            logp = logits[0, len(prompt) - 1 : -1].log_softmax(-1).gather(-1, tokens[0, len(prompt):, None]).sum()
            (sign * logp).backward()
            for s in sites:
                total[s] += store[s].grad[0, 1 : len(prompt)].sum(0).detach().cpu() / len(requests)
            model.zero_grad(set_to_none=True)
    return total


def score_latents(saes: Mapping[str, object], gradients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per site [d_sae]: first-order gain in refusal log-odds per unit of the latent at every prompt position."""
    out = {}
    for site, g in gradients.items():
        w_dec = saes[site].W_dec.detach().float().cpu()
        out[site] = (w_dec @ g.float()) / w_dec.norm(dim=1).clamp_min(1e-12)
    return out


def refusal_rates(model, defense, harmful: Sequence[str], harmless: Sequence[str], max_new_tokens: int,
                  batch_size: int = 32) -> dict[str, float]:
    """Generated-and-judged rates: harmful requests refused, harmless instructions not complied with
    (the same rule as the reported over-refusal)."""
    _, labels, _, _ = generate_and_judge(model, [*harmful, *harmless], defense, max_new_tokens, batch_size)
    n = len(harmful)
    return {"harmful_refusal": sum(lab == "refusal" for lab in labels[:n]) / max(n, 1),
            "harmless_refusal": sum(not complies(lab) for lab in labels[n:]) / max(len(harmless), 1)}


def calibrate_value(model, saes, features: Mapping[str, Sequence[int]], harmful: Sequence[str],
                    harmless: Sequence[str], config: DiscoveryConfig,
                    log: Callable[[str], None] = print) -> tuple[float, list[dict[str, Any]]]:
    """(chosen set value, table of judged refusal rates per value): the value with the largest
    harmful refusal rate minus harmless over-refusal rate (the smaller value on a tie)."""
    table = []
    for value in sorted(config.values):
        defense = FeatureClamp(ClampConfig(features=features, mode="set", value=value), saes)
        row = {"value": value, **refusal_rates(model, defense, harmful, harmless, config.max_new_tokens)}
        table.append(row)
        log(f"[refusal] calibration value {value:g}: harmful refused {row['harmful_refusal']:.2f}, "
            f"harmless not complied {row['harmless_refusal']:.2f}")
    best = max(table, key=lambda r: (r["harmful_refusal"] - r["harmless_refusal"], -r["value"]))
    return float(best["value"]), table


def discover_refusal_clamp(model, saes: Mapping[str, object], harmful: Sequence[str], harmless: Sequence[str],
                           config: DiscoveryConfig, log: Callable[[str], None] = print) -> RefusalClamp:
    """Score latents on ``harmful`` requests, pick the best per site, calibrate the set value."""
    for site in config.sites:
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), "refusal discovery")
    gradients = refusal_gradients(model, config.sites, list(harmful)[: config.n_gradient],
                                  config.refusal_opening, config.compliance_opening)
    scores = score_latents(saes, gradients)
    features = {s: scores[s].topk(config.n_latents).indices.tolist() for s in config.sites}
    picked = {s: [round(float(scores[s][i]), 4) for i in features[s]] for s in config.sites}
    if config.value is not None:
        value, table = float(config.value), []
    else:
        value, table = calibrate_value(model, saes, features, list(harmful)[: config.n_calibrate],
                                       list(harmless)[: config.n_calibrate], config, log)
    defense = FeatureClamp(ClampConfig(features=features, mode="set", value=value), saes)
    return RefusalClamp(defense, picked, tuple(table))
