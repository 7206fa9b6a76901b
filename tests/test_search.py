"""Algorithm 1 end to end on the digits MLP: q search, ranking, protection, the new plan."""
from __future__ import annotations

import json
import shutil
from dataclasses import fields

import pytest

from flow.cli import main
from flow.pipeline.search import SearchResult
from flow.pipeline.session import open_session


@pytest.mark.slow
def test_search_writes_a_plan_the_flow_can_load(mlp_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    assert main(["search", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    qs = [r["q"] for r in res["tried"]]
    assert qs[0] == 8 and len(qs) == len(set(qs)) and all(2 <= q <= 16 for q in qs)
    # the paper's rule: halve q while accurate and robust, else grow it by half
    for prev, nxt in zip(res["tried"], res["tried"][1:]):
        good = prev["accuracy"] > 0.9 and prev["drop"] < 0.01
        assert nxt["q"] == (prev["q"] - prev["q"] // 2 if good else prev["q"] + prev["q"] // 2)
    accurate = [r["q"] for r in res["tried"] if r["accuracy"] > 0.9]
    assert res["base_q"] == min(accurate)
    steps = res["protection_steps"]
    assert steps[0]["protected"] == []
    for i, st in enumerate(steps[1:], start=1):
        assert st["protected"] == res["ranking"][:i]
        assert st["weight_bits"] > steps[i - 1]["weight_bits"]
    # every design evaluated, the paper's pick (the protection loop's last) and the pareto pick
    designs = res["designs"]
    assert [(d["q"], d["protected"]) for d in designs] == (
        [(r["q"], []) for r in res["tried"]] + [(res["base_q"], st["protected"])
                                               for st in steps[1:]])
    assert res["mode"] == "pareto" and res["paper_choice"] == len(designs) - 1
    pick = designs[res["chosen"]]
    assert (res["q"], res["protected"]) == (pick["q"], pick["protected"])
    pool = [d for d in designs if d["accuracy"] > 0.9]
    assert pick in pool and not any(
        d["weight_bits"] <= pick["weight_bits"] and d["drop"] <= pick["drop"]
        and (d["weight_bits"], d["drop"]) != (pick["weight_bits"], pick["drop"]) for d in pool)
    assert res["met_drop_threshold"] == (pick["drop"] <= 0.01)
    text = SearchResult(**{f.name: res[f.name] for f in fields(SearchResult)}).summary()
    assert f"* pareto pick (bits): q = {res['q']}" in text and "p paper's pick: q = " in text
    plan = json.loads((run / "plan.json").read_text())
    assert plan["source"] == "search" and plan["checkpoint"] == f"search/q{res['q']}.pt"
    assert {e["weight_bits"] for e in plan["layers"].values()} == {res["q"]}
    assert [n for n, e in plan["layers"].items() if e["protected"]] == sorted(
        res["protected"], key=list(plan["layers"]).index)
    s = open_session(run, "cpu")                     # the flow loads the searched plan
    assert s.image.memories["fc1.weight"].fmt.bits == res["q"]
    acc = s.executor.correct(s.data.test.x, s.data.test.y) / len(s.data.test.y)
    assert acc == pytest.approx(next(r["accuracy"] for r in res["tried"] if r["q"] == res["q"]))


@pytest.mark.slow
def test_search_paper_mode_builds_the_papers_pick(mlp_run, tmp_path, capsys):
    """``search.mode: paper``: the plan is the protection loop's last design, whatever pareto
    would pick (r = 0 here: the loop protects until the drop is <= 0 or every layer is)."""
    run = tmp_path / "run"
    shutil.copytree(mlp_run, run)
    assert main(["search", str(run), "--json", "--set", "search.mode=paper",
                 "--set", "search.drop_threshold=0"]) == 0
    res = json.loads(capsys.readouterr().out)
    paper = res["designs"][res["paper_choice"]]
    assert res["mode"] == "paper" and (res["q"], res["protected"]) == (paper["q"],
                                                                      paper["protected"])
    assert paper["q"] == res["base_q"] and paper["protected"] == res["protection_steps"][-1][
        "protected"]
    plan = json.loads((run / "plan.json").read_text())
    assert {e["weight_bits"] for e in plan["layers"].values()} == {paper["q"]}
    assert sorted(n for n, e in plan["layers"].items() if e["protected"]) == sorted(
        paper["protected"])
