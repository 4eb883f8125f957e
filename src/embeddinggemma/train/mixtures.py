"""Mixture search: which sampling rates over the training datasets give the best model (paper section 2).

The paper's procedure: start from a (grid-searched) seed mixture plus 10 mixtures sampled from a
Dirichlet distribution, then run Bayesian optimisation over the sampling rates against an evaluation
score; each resulting mixture is fine-tuned separately and the runs are souped (``soup.py``). Here the
objective is any callable ``mixture -> score`` (typically ``recipe_objective``: train a short run with
those rates, evaluate it), so the search itself is cheap to test.

Parametrisation: one weight ``w_d`` in [0, 1] per dataset, rates ``w / sum(w)``. Every mixture on the
simplex is reachable (``w = m / max(m)``), so the seed and Dirichlet mixtures are entered as ordinary
observations, and a weight of 0 drops a dataset.

Bayesian optimisation is optuna's, not hand-written: ``GPSampler`` (default) fits a Gaussian process
with a Matern kernel and maximises log expected improvement. A GP is the right model here: every
evaluation is a training run, so budgets are tens of trials, the space is continuous and low-dimensional
(one weight per dataset), and a GP is the most sample-efficient surrogate there. ``TPESampler`` is
offered for larger budgets or many datasets, where TPE scales better. optuna is maintained, seedable and
already the standard tool in this space.

Persistence: every finished trial is appended to a JSON file (mixture, weights, score). A search with the
same file resumes: finished trials are not re-run, and each Bayesian proposal is computed from the
recorded history with a sampler seeded by (seed, trial number), so an interrupted and resumed search
proposes exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["MixtureSearch", "MixtureTrial", "recipe_objective", "search_mixtures"]

FORMAT = "embeddinggemma-mixture-search/1"
Sampler = Literal["gp", "tpe"]
Objective = Callable[[dict[str, float]], float]


@dataclass
class MixtureTrial:
    """One evaluated mixture. ``kind``: "seed", "dirichlet" or "bayesian"."""

    number: int
    kind: str
    mixture: dict[str, float]
    weights: dict[str, float]
    score: float


@dataclass
class MixtureSearch:
    """Seed mixture + ``num_dirichlet`` Dirichlet samples + ``num_bayesian`` Bayesian-optimisation trials.

    Args:
        datasets: dataset names (the recipe's ``data.datasets`` keys).
        objective: mixture (name -> rate, summing to 1) -> score.
        seed_mixture: the starting mixture (rates, normalised); default uniform.
        num_dirichlet: Dirichlet samples after the seed (paper: 10).
        dirichlet_alpha: concentration; 1 is uniform over the simplex, < 1 favours sparse mixtures.
        num_bayesian: Bayesian-optimisation trials after the initial design.
        sampler: "gp" (optuna GPSampler, default) or "tpe" (TPESampler).
        direction: "maximize" (a retrieval score) or "minimize" (a loss).
        seed: makes the Dirichlet samples and every proposal reproducible.
        state_path: JSON file with the trials; an existing one is resumed.
    """

    datasets: Sequence[str]
    objective: Objective
    seed_mixture: Mapping[str, float] | None = None
    num_dirichlet: int = 10
    dirichlet_alpha: float = 1.0
    num_bayesian: int = 10
    sampler: Sampler = "gp"
    direction: Literal["maximize", "minimize"] = "maximize"
    seed: int = 0
    state_path: str | Path | None = None
    trials: list[MixtureTrial] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.datasets = list(self.datasets)
        if len(set(self.datasets)) != len(self.datasets) or not self.datasets:
            raise ValueError(f"datasets must be unique and non-empty, got {self.datasets}")
        if self.sampler not in ("gp", "tpe"):
            raise ValueError(f"sampler must be 'gp' or 'tpe', got {self.sampler!r}")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {self.direction!r}")
        if self.num_dirichlet < 0 or self.num_bayesian < 0 or not self.dirichlet_alpha > 0:
            raise ValueError("num_dirichlet and num_bayesian must be >= 0 and dirichlet_alpha > 0")
        if self.state_path is not None and Path(self.state_path).exists():
            self._load(Path(self.state_path))

    # -- the initial design ------------------------------------------------------------------------

    def initial_mixtures(self) -> list[tuple[str, dict[str, float]]]:
        """The seed mixture then the Dirichlet samples, as (kind, mixture)."""
        if self.seed_mixture is None:
            seed = {d: 1.0 for d in self.datasets}
        else:
            unknown = sorted(set(self.seed_mixture) - set(self.datasets))
            if unknown:
                raise ValueError(f"seed_mixture names {unknown}, which are not among the datasets {self.datasets}")
            seed = {d: float(self.seed_mixture.get(d, 0.0)) for d in self.datasets}
        out = [("seed", _normalise(seed))]
        rng = np.random.default_rng([self.seed, 7])
        for sample in rng.dirichlet([self.dirichlet_alpha] * len(self.datasets), size=self.num_dirichlet):
            out.append(("dirichlet", _normalise(dict(zip(self.datasets, sample.tolist(), strict=True)))))
        return out

    # -- running -----------------------------------------------------------------------------------

    def run(self) -> list[MixtureTrial]:
        """Evaluate every planned trial not yet recorded; returns all trials."""
        initial = self.initial_mixtures()
        total = len(initial) + self.num_bayesian
        while len(self.trials) < total:
            number = len(self.trials)
            if number < len(initial):
                kind, mixture = initial[number]
                weights = _weights_of(mixture)
            else:
                kind, weights = "bayesian", self._propose(number)
                mixture = _normalise(weights)
            logger.info("mixture trial %d/%d (%s): %s", number + 1, total, kind, _short(mixture))
            score = float(self.objective(dict(mixture)))
            if not math.isfinite(score):
                raise ValueError(f"the objective returned {score} for mixture {mixture}; it must be a finite number")
            self.trials.append(MixtureTrial(number, kind, mixture, weights, score))
            logger.info("mixture trial %d: score %.6g", number + 1, score)
            self._save()
        return self.trials

    def best(self, k: int = 1) -> list[MixtureTrial]:
        """The ``k`` best trials (the mixtures to fine-tune and soup)."""
        reverse = self.direction == "maximize"
        return sorted(self.trials, key=lambda t: (-t.score if reverse else t.score, t.number))[:k]

    def _propose(self, number: int) -> dict[str, float]:
        import optuna
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {_param(d): FloatDistribution(0.0, 1.0) for d in self.datasets}
        sampler_seed = int(np.random.default_rng([self.seed, number]).integers(2**31))
        if self.sampler == "gp":
            sampler = optuna.samplers.GPSampler(seed=sampler_seed, n_startup_trials=2)
        else:
            sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=2)
        study = optuna.create_study(direction=self.direction, sampler=sampler)
        for trial in self.trials:
            params = {_param(d): trial.weights[d] for d in self.datasets}
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=trial.score))
        proposal = study.ask(distributions)
        weights = {d: float(proposal.params[_param(d)]) for d in self.datasets}
        if sum(weights.values()) <= 0:  # every weight at exactly 0: no mixture; fall back to uniform
            weights = {d: 1.0 for d in self.datasets}
        return weights

    # -- persistence -------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {
            "datasets": list(self.datasets),
            "seed_mixture": None if self.seed_mixture is None else dict(self.seed_mixture),
            "num_dirichlet": self.num_dirichlet,
            "dirichlet_alpha": self.dirichlet_alpha,
            "sampler": self.sampler,
            "direction": self.direction,
            "seed": self.seed,
        }

    def _save(self) -> None:
        if self.state_path is None:
            return
        path = Path(self.state_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "config": self._config(),
            "num_bayesian": self.num_bayesian,
            "trials": [asdict(t) for t in self.trials],
            "best": asdict(self.best()[0]) if self.trials else None,
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a mixture-search state file (format {FORMAT!r})")
        saved, now = state["config"], self._config()
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            details = "; ".join(f"{k}: file {saved.get(k)!r} vs now {now[k]!r}" for k in diff)
            raise ValueError(f"{path} was written by a different search ({details}); use a new state file")
        self.trials = [MixtureTrial(**t) for t in state["trials"]]
        logger.info("resuming the mixture search in %s after %d trials", path, len(self.trials))


def search_mixtures(datasets: Sequence[str], objective: Objective, **kwargs: Any) -> MixtureSearch:
    """Run a ``MixtureSearch`` (arguments as its fields) and return it; ``.best(k)`` gives the mixtures."""
    search = MixtureSearch(datasets, objective, **kwargs)
    search.run()
    return search


def recipe_objective(
    recipe_path: str | Path,
    work_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    dim: int | None = None,
) -> Objective:
    """ "Train a short run, evaluate": the objective the paper optimises.

    Each call trains ``recipe_path`` (with ``overrides``, e.g. ``train.steps=500``) with ``data.rates`` set
    to the mixture, in ``work_dir/trial-NNN``, and returns the mean main score of its final evaluation
    (the recipe must list ``eval.tasks``) at ``dim`` (default: the first evaluated dim).
    """
    from embeddinggemma.train.recipes import load_recipe
    from embeddinggemma.train.trainer import LOG_FILE, train_recipe

    counter = {"n": 0}

    def objective(mixture: dict[str, float]) -> float:
        out = Path(work_dir) / f"trial-{counter['n']:03d}"
        counter["n"] += 1
        rates = "{" + ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in mixture.items()) + "}"
        recipe = load_recipe(recipe_path, [*overrides, f"data.rates={rates}", f"train.output_dir={out}"])
        if not recipe.eval.tasks:
            raise ValueError(f"{recipe_path}: the mixture objective needs eval.tasks to score each run")
        train_recipe(recipe)
        evals = [r for r in map(json.loads, (out / LOG_FILE).read_text().splitlines()) if r["event"] == "eval"]
        scores = evals[-1]["mean_main_score"]
        return float(scores[str(dim)] if dim is not None else next(iter(scores.values())))

    return objective


def _param(name: str) -> str:
    return f"w[{name}]"


def _normalise(mixture: Mapping[str, float]) -> dict[str, float]:
    total = math.fsum(mixture.values())
    if not total > 0 or any(v < 0 for v in mixture.values()):
        raise ValueError(f"a mixture needs rates >= 0 with a positive sum, got {dict(mixture)}")
    return {k: v / total for k, v in mixture.items()}


def _weights_of(mixture: Mapping[str, float]) -> dict[str, float]:
    top = max(mixture.values())
    return {k: v / top for k, v in mixture.items()}


def _short(mixture: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in mixture.items())
