"""hetq table: the three configurations per n, their metrics, and the files (MLP, small)."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from flow.cli import main


@pytest.mark.slow
def test_table_rows_metrics_and_files(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump({
        "seed": 0, "model": {"arch": "mlp"}, "train": {"epochs": 4},
        "rank": {"min_tested": 30, "patience": 2},
        "table": {"bits": [3, 4], "ber": 1e-2, "bers": [1e-3, 1e-2], "trials": 12,
                  "curve_trials": 6}}))
    out = tmp_path / "run"
    assert main(["table", str(cfg), "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = {r["config"]: r for r in res["rows"]}
    assert list(rows) == ["hom(3,-)", "hom(-,5)", "het(3,5)", "hom(4,-)", "hom(-,6)", "het(4,6)"]
    assert res["reference"] == "hom(3,-)"
    ref = rows["hom(3,-)"]
    weights = ref["memory_bits"] // 3
    for n in (3, 4):
        hom, full, het = rows[f"hom({n},-)"], rows[f"hom(-,{n + 2})"], rows[f"het({n},{n + 2})"]
        assert hom["memory_bits"] == n * weights and full["memory_bits"] == (n + 2) * weights
        assert hom["memory_bits"] < het["memory_bits"] < full["memory_bits"]
        assert len(het["protected"]) == 1 and het["protected"][0] in full["protected"]
        assert hom["cycles"] == full["cycles"] == het["cycles"]       # the voter costs no cycle
        for r in (hom, full, het):
            mem_ovh = r["memory_bits"] / ref["memory_bits"]
            drop = max(r["drop_pct"], 0)             # a mean gain under faults is no drop
            assert r["rap"] == pytest.approx(drop * mem_ovh * r["exec_time_pct"] / 100)
            assert r["rap"] >= 0 and r["p_drop"] >= 0
            assert r["drop_low_pct"] <= r["drop_pct"] <= r["drop_high_pct"]
    assert res["constants"] == {"lifetime": 87600.0, "test_interval": 24.0, "p_single": 1e-20}
    folder = out / "table"
    with open(folder / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    md = (folder / "table.md").read_text()
    assert "| het(3,5) |" in md and "P_single = 1e-20" in md
    assert "12 fault maps at BER 0.01, 6 at the other points" in md
    assert all(len(r["campaigns"]) == 2 for r in rows.values())  # the table's point, the curve
    curves = json.loads((folder / "curves.json").read_text())["curves"]
    assert sorted(curves) == ["3", "4"]
    assert [r["ber"] for r in curves["3"]["het(3,5)"]] == [1e-3, 1e-2]
    assert [r["trials"] for r in curves["4"]["hom(4,-)"]] == [6, 12]
    for png in ("accuracy_vs_ber_n3.png", "accuracy_vs_ber_n4.png", "rap.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"


def test_table_spends_its_maps_on_the_table_point_when_asked():
    from flow.core.config import TableConfig
    from flow.pipeline.table import _groups
    bers = (1e-5, 1e-4, 1e-3)
    assert _groups(bers, TableConfig(trials=1000)) == [(bers, 1000)]
    assert _groups(bers, TableConfig(trials=1000, curve_trials=1000)) == [(bers, 1000)]
    assert _groups(bers, TableConfig(trials=1000, curve_trials=100)) == [
        ((1e-4,), 1000), ((1e-5, 1e-3), 100)]
    assert _groups((1e-4,), TableConfig(trials=1000, curve_trials=100)) == [((1e-4,), 1000)]
