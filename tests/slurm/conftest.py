"""The 2-node cluster for the Slurm tests (``make test-slurm``): one per session, stopped by pid at the end,
also when a test fails or the start itself fails."""

from __future__ import annotations

import pytest

from tests.slurm.cluster import Cluster, missing_tools


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, request) -> Cluster:
    missing = missing_tools()
    if missing:
        pytest.fail(f"Slurm tools missing: {missing}; `make test-slurm` installs them (apt-get)")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    request.addfinalizer(c.stop)
    return c.start()
