"""The preference losses, by name, and the metrics each reports.

Each loss takes a micro-batch's answers (summed log-probabilities under the policy and under the
parent model, token counts, KTO's labels) and returns one loss per example plus named metrics as
(sum, count) pairs, so the loop can add them over micro-batches and processes before dividing.
The formulas, with ``pc``/``pr`` the policy's summed log-probabilities of the chosen/rejected
answer, ``rc``/``rr`` the reference's, ``avg`` a log-probability divided by its token count:

- sigmoid (DPO, Rafailov et al. 2023): ``-logsigmoid(beta * ((pc - rc) - (pr - rr)))``
- ipo (Azar et al. 2023), on length-averaged log-ratios as its authors compute them:
  ``((avg(pc - rc) - avg(pr - rr)) - 1 / (2 * beta)) ** 2``
- simpo (Meng et al. 2024), no reference: ``-logsigmoid(beta * (avg pc - avg pr) - gamma)``
- orpo (Hong et al. 2024), no reference: ``-avg pc - lambda * logsigmoid(odds(avg pc) -
  odds(avg pr))`` with ``odds(a) = a - log(1 - exp(a))``
- each DPO loss (sigmoid, ipo, simpo) with ``nll_weight`` ``w`` adds ``w * -avg pc`` (RPO, Pang
  et al. 2024: the chosen answer kept likely, where DPO alone lowers both answers and drifts into
  long, repeating ones); its ``nll`` is reported either way
- kto (Ethayarajh et al. 2024): with ``z = max(0, mean(p' - r'))`` over the micro-batch's
  mismatched completions (no gradient through it), a desirable completion costs
  ``w_d * (1 - sigmoid(beta * ((pc - rc) - z)))``, an undesirable one
  ``w_u * (1 - sigmoid(beta * (z - (pc - rc))))``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cuvee.train.recipe import Recipe

Stats = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (sum, count)


@dataclass(frozen=True)
class Answers:
    """A micro-batch's answers, (E, 2) each: column 0 the chosen answer (KTO: the completion),
    column 1 the rejected one (KTO: another example's completion, for the KL estimate)."""

    policy: torch.Tensor
    reference: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor  # (E,) KTO: desirable

    @property
    def ratio(self) -> torch.Tensor:
        return self.policy - self.reference

    @property
    def avg(self) -> torch.Tensor:
        return self.policy / self.tokens.clamp_min(1)


@dataclass(frozen=True)
class Knobs:
    beta: float
    gamma: float
    lam: float
    desirable_weight: float
    undesirable_weight: float
    nll_weight: float = 0.0

    @classmethod
    def of(cls, recipe: Recipe) -> Knobs:
        return cls(
            beta=recipe.preference_beta,
            gamma=recipe.simpo_gamma,
            lam=recipe.orpo_lambda,
            desirable_weight=recipe.kto_desirable_weight,
            undesirable_weight=recipe.kto_undesirable_weight,
            nll_weight=recipe.nll_weight,
        )


def _mean_of(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = values.detach().float()
    return values.sum(), torch.tensor(float(values.numel()), device=values.device)


def _pair_stats(rewards: torch.Tensor, a: Answers, with_reference: bool) -> Stats:
    """Rewards of the chosen and rejected answers, their margin, the share of pairs where the
    chosen one wins, and (against a reference) the drift: the policy's log-ratio to the parent
    per answer token, an estimate of their KL divergence on the data's answers."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    stats = {
        "rewards_chosen": _mean_of(chosen),
        "rewards_rejected": _mean_of(rejected),
        "margin": _mean_of(chosen - rejected),
        "accuracy": _mean_of((chosen > rejected).float()),
    }
    if with_reference:
        stats["drift"] = _mean_of(a.ratio.sum(1) / a.tokens.sum(1).clamp_min(1))
    return stats


def sigmoid_loss(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
    logits = k.beta * (a.ratio[:, 0] - a.ratio[:, 1])
    return -F.logsigmoid(logits), _pair_stats(k.beta * a.ratio, a, True)


def ipo_loss(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
    avg_ratio = a.ratio / a.tokens.clamp_min(1)
    loss = (avg_ratio[:, 0] - avg_ratio[:, 1] - 1 / (2 * k.beta)) ** 2
    return loss, _pair_stats(k.beta * a.ratio, a, True)


def simpo_loss(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
    rewards = k.beta * a.avg
    return -F.logsigmoid(rewards[:, 0] - rewards[:, 1] - k.gamma), _pair_stats(rewards, a, False)


def _with_nll(
    loss: Callable[[Answers, Knobs], tuple[torch.Tensor, Stats]],
) -> Callable[[Answers, Knobs], tuple[torch.Tensor, Stats]]:
    """A pair loss plus ``nll_weight`` times the chosen answer's per-token NLL (RPO)."""

    def with_nll(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
        losses, stats = loss(a, k)
        nll = -a.avg[:, 0]
        stats["nll"] = _mean_of(nll)
        return (losses + k.nll_weight * nll if k.nll_weight else losses), stats

    return with_nll


def _log_odds(avg: torch.Tensor) -> torch.Tensor:
    # log(p / (1 - p)) for p = exp(avg); avg is kept below 0 so 1 - p stays positive
    avg = avg.clamp_max(-1e-6)
    return avg - torch.log(-torch.expm1(avg))


def orpo_loss(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
    odds = _log_odds(a.avg)
    ratio = F.logsigmoid(odds[:, 0] - odds[:, 1])
    nll = -a.avg[:, 0]
    stats = _pair_stats(odds, a, False)
    stats["nll"] = _mean_of(nll)
    return nll - k.lam * ratio, stats


def kto_loss(a: Answers, k: Knobs) -> tuple[torch.Tensor, Stats]:
    kl = a.ratio[:, 1].detach().mean().clamp_min(0)
    ratio = a.ratio[:, 0]
    good = a.labels
    loss = torch.where(
        good,
        k.desirable_weight * (1 - torch.sigmoid(k.beta * (ratio - kl))),
        k.undesirable_weight * (1 - torch.sigmoid(k.beta * (kl - ratio))),
    )
    rewards = (k.beta * ratio).detach()
    count = torch.tensor(float(good.numel()), device=ratio.device)
    stats = {
        "rewards_desirable": (rewards[good].sum(), good.sum().float()),
        "rewards_undesirable": (rewards[~good].sum(), (~good).sum().float()),
        # the micro-batch's reference point, weighted by its examples
        "kl": (kl * count, count),
        # desirable completions rewarded above zero, undesirable ones below
        "accuracy": (((rewards > 0) == good).float().sum(), count),
        "drift": _mean_of(a.ratio[:, 0] / a.tokens[:, 0].clamp_min(1)),
    }
    return loss, stats


@dataclass(frozen=True)
class PreferenceLossSpec:
    fn: Callable[[Answers, Knobs], tuple[torch.Tensor, Stats]]
    needs_reference: bool
    stats: tuple[str, ...]  # the metrics it reports, in the order the loop sums them


_PAIR = ("rewards_chosen", "rewards_rejected", "margin", "accuracy")
LOSSES: dict[str, PreferenceLossSpec] = {
    "sigmoid": PreferenceLossSpec(_with_nll(sigmoid_loss), True, (*_PAIR, "drift", "nll")),
    "ipo": PreferenceLossSpec(_with_nll(ipo_loss), True, (*_PAIR, "drift", "nll")),
    "simpo": PreferenceLossSpec(_with_nll(simpo_loss), False, (*_PAIR, "nll")),
    "orpo": PreferenceLossSpec(orpo_loss, False, (*_PAIR, "nll")),
    "kto": PreferenceLossSpec(
        kto_loss, True, ("rewards_desirable", "rewards_undesirable", "kl", "accuracy", "drift")
    ),
}


def loss_name(recipe: Recipe) -> str:
    """The LOSSES entry a recipe trains with: DPO's loss_type, else the method's own."""
    return recipe.loss_type if recipe.method == "dpo" else recipe.method


def packed_stats(spec: PreferenceLossSpec, stats: Stats) -> torch.Tensor:
    """The stats as one vector (sum, count, sum, count ...) in the spec's order."""
    return torch.stack([t for name in spec.stats for t in stats[name]]).float()


def finished_stats(spec: PreferenceLossSpec, vector: list[float]) -> dict[str, float]:
    """Means from summed (sum, count) pairs; a metric with nothing counted is left out."""
    out = {}
    for i, name in enumerate(spec.stats):
        total, count = vector[2 * i], vector[2 * i + 1]
        if count > 0:
            out[name] = total / count
    return out
