"""Mixture search: seed + Dirichlet + Bayesian optimisation, reproducible, persisted and resumable."""

from __future__ import annotations

import json
import math

import pytest

from embeddinggemma.train.mixtures import MixtureSearch, search_mixtures

DATASETS = ["code", "manpages", "bitext"]
pytestmark = pytest.mark.usefixtures("single_thread")
TARGET = {"code": 0.6, "manpages": 0.3, "bitext": 0.1}


def objective(mixture: dict[str, float]) -> float:
    """A cheap stand-in for 'train a short run and evaluate': best at TARGET."""
    return -sum((mixture[d] - TARGET[d]) ** 2 for d in DATASETS)


def _run(**kwargs):
    return search_mixtures(DATASETS, objective, num_dirichlet=1, num_bayesian=2, seed=5, **kwargs)


def test_design_order_scores_and_normalisation():
    search = _run(seed_mixture={"code": 2, "manpages": 1, "bitext": 1})
    assert [t.kind for t in search.trials] == ["seed", "dirichlet", "bayesian", "bayesian"]
    assert search.trials[0].mixture == {"code": 0.5, "manpages": 0.25, "bitext": 0.25}
    for trial in search.trials:
        assert math.fsum(trial.mixture.values()) == pytest.approx(1.0)
        assert all(v >= 0 for v in trial.mixture.values())
        assert trial.score == pytest.approx(objective(trial.mixture))
    assert search.best(1)[0].score == max(t.score for t in search.trials)
    ranked = [t.score for t in search.best(4)]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == 4


def test_same_seed_same_search_other_seed_other_search():
    a, b = _run(), _run()
    assert [t.mixture for t in a.trials] == [t.mixture for t in b.trials]
    c = search_mixtures(DATASETS, objective, num_dirichlet=1, num_bayesian=0, seed=6)
    assert c.trials[1].mixture != a.trials[1].mixture


class _CrashError(RuntimeError):
    pass


def test_interrupted_search_resumes_to_the_same_trials(tmp_path):
    straight = _run(state_path=tmp_path / "straight.json")
    calls = []

    def crashing(mixture):
        if len(calls) == 3:
            raise _CrashError
        calls.append(mixture)
        return objective(mixture)

    state = tmp_path / "resumed.json"
    with pytest.raises(_CrashError):
        search_mixtures(DATASETS, crashing, num_dirichlet=1, num_bayesian=2, seed=5, state_path=state)
    assert len(json.loads(state.read_text())["trials"]) == 3
    resumed_calls = []
    resumed = search_mixtures(
        DATASETS, lambda m: resumed_calls.append(m) or objective(m), num_dirichlet=1, num_bayesian=2, seed=5,
        state_path=state,
    )  # fmt: skip
    assert len(resumed_calls) == 1  # only the missing trial ran
    assert [t.mixture for t in resumed.trials] == [t.mixture for t in straight.trials]
    saved = json.loads(state.read_text())
    assert saved["best"]["score"] == max(t.score for t in straight.trials)
    with pytest.raises(ValueError, match=r"different search.*seed"):
        MixtureSearch(DATASETS, objective, num_dirichlet=1, seed=6, state_path=state)


def test_tpe_sampler_and_bad_inputs():
    search = search_mixtures(DATASETS, objective, num_dirichlet=0, num_bayesian=1, sampler="tpe", seed=1)
    assert [t.kind for t in search.trials] == ["seed", "bayesian"]
    with pytest.raises(ValueError, match="not among the datasets"):
        _run(seed_mixture={"nope": 1.0})
    with pytest.raises(ValueError, match="finite"):
        search_mixtures(DATASETS, lambda m: float("nan"), num_dirichlet=0, num_bayesian=0)
    with pytest.raises(ValueError, match="sampler"):
        MixtureSearch(DATASETS, objective, sampler="random")
