"""The local Ray cluster of the corpus-scale tests (helpers for corpora are in scale_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """One in-process Ray instance per test module: 2 CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(
        address="local",  # never attach to another cluster running on this machine
        num_cpus=2,
        object_store_memory=96 * 2**20,
        include_dashboard=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
