"""The executor interface: a local Ray instance gives the same campaign and GA results."""
from __future__ import annotations

import pytest

from flow.core.config import RankConfig
from flow.core.errors import ConfigError
from flow.pipeline.session import open_session
from flow.reliability.campaign import CampaignSpec, run_campaign
from flow.reliability.ga import rank_layers_ga
from flow.reliability.parallel import FaultWorker, LocalPool, make_pool


def test_unknown_executor_is_an_error(mlp_run):
    s = open_session(mlp_run, "cpu")
    with pytest.raises(ConfigError, match="--executor: unknown executor 'dask'"):
        make_pool("dask", s.executor, s.image, s.data.test.x, s.data.test.y)


def test_local_pool_yields_every_task_in_order(mlp_run):
    s = open_session(mlp_run, "cpu")
    pool = LocalPool(FaultWorker(s.executor, s.image, s.data.test.x, s.data.test.y))
    tasks = [(0, 1e-2, t, ("weight",), None, None, "flip") for t in range(5)]
    out = list(pool.imap("trial", tasks))
    assert [task for task, _ in out] == tasks


@pytest.mark.slow
def test_ray_gives_the_same_results(mlp_run, tmp_path):
    import ray  # a test dependency (pyproject extra "test")
    s = open_session(mlp_run, "cpu")
    x, y = s.data.test.x, s.data.test.y
    spec = CampaignSpec(bers=(1e-3, 2e-2), trials=20, seed=3)
    local = run_campaign(s.executor, s.image, x, y, spec, tmp_path / "a.sqlite", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = make_pool("ray", s.executor, s.image, x, y, workers=2)
        remote = run_campaign(s.executor, s.image, x, y, spec, tmp_path / "b.sqlite",
                              progress=False, pool=pool)
        cfg = RankConfig(min_tested=20, patience=2)
        ga_ray = rank_layers_ga(s.executor, s.image, x, y, cfg, 1, pool=pool)
        pool.close()
    finally:
        ray.shutdown()
    assert remote["summary"] == local["summary"]
    ga_local = rank_layers_ga(s.executor, s.image, x, y, cfg, 1)
    assert ga_ray.layers == ga_local.layers and ga_ray.verdicts == ga_local.verdicts
    assert ga_ray.inferences == ga_local.inferences
