"""Campaigns through the integer executor: seeded, stored per trial, exported and plotted."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flow.pipeline.commands import Console, inject
from flow.pipeline.rundir import RunDir
from flow.pipeline.session import open_session
from flow.reliability.campaign import CampaignSpec, default_trials, run_campaign
from flow.reliability.faults import Injector, sample_seu, trial_rng
from flow.reliability.stats import leveugle_sample_size


def test_default_trials_is_leveugle():
    assert default_trials(None, 0.05, 0.95) == leveugle_sample_size(0.05, 0.95) == 385
    assert default_trials(7, 0.05, 0.95) == 7


def test_campaign_matches_manual_trials(mlp_run, tmp_path):
    """The stored accuracy of each trial equals a manual replay of the same seeded fault map."""
    s = open_session(mlp_run, "cpu")
    spec = CampaignSpec(bers=(1e-2,), trials=6, seed=11)
    res = run_campaign(s.executor, s.image, s.data.test.x, s.data.test.y, spec,
                       tmp_path / "c.sqlite", progress=False)
    from flow.reliability.store import TrialStore
    with TrialStore(tmp_path / "c.sqlite") as st:
        rows = st.trials(res["campaign"])
    inj = Injector(s.image, s.executor)
    for row in rows:
        fmap = sample_seu(s.image, row["ber"], trial_rng(11, row["ber"], row["trial"]))
        with inj.injected(fmap):
            correct = s.executor.correct(s.data.test.x, s.data.test.y)
        assert row["correct"] == correct and row["n_faults"] == len(fmap)
    accs = np.array([r["accuracy"] for r in rows])
    assert res["summary"][0]["accuracy_mean"] == accs.mean()
    assert res["summary"][0]["trials"] == 6


def test_inject_step_writes_exports(mlp_run, tmp_path):
    import shutil
    run = RunDir(tmp_path / "run")
    shutil.copytree(mlp_run, run.path)
    res = inject(str(run.path), ber=[1e-3, 3e-2], trials=5, seed=0,
                 con=Console(progress=False))
    out = run.path / "inject" / res.campaign
    assert (out / "summary.csv").read_text().splitlines()[0].startswith("ber,")
    assert (out / "accuracy_vs_ber.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drops = [r["drop_mean"] for r in res.summary_rows]
    assert drops[1] > drops[0]          # more faults, more damage
    again = inject(str(run.path), ber=[1e-3, 3e-2], trials=5, seed=0,
                   con=Console(progress=False))
    assert again.summary_rows == res.summary_rows
    # the runner recorded the step; a log (none when the tools said nothing) sits in its folder
    rec = run.manifest()["steps"]["inject"]
    assert rec["campaign"] == res.campaign
    assert not (run.path / "inject.log").exists()
    assert rec["log"] is None or Path(rec["log"]) == run.path / "inject" / "inject.log"
    assert not list(run.path.glob("inject/*.partial"))
