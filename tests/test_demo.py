"""``prunekit demo`` end to end: every method trains, delivers, saves and reloads."""

from __future__ import annotations

import json

from prunekit import demo, io, surgery


def test_demo_runs_every_method_and_saves_loadable_models(tmp_path, capsys):
    rows = demo.main(out=str(tmp_path), quiet=True)  # the real demo: 15 epochs per run
    assert [r["method"] for r in rows] == ["dense", *demo.METHODS]
    out = capsys.readouterr().out
    assert "MACs x" in out and all(m in out for m in demo.METHODS)
    by = {r["method"]: r for r in rows}
    dense = by["dense"]
    for name in ("trimming", "sss", "sght"):  # structured: really smaller
        assert by[name]["params"] < dense["params"] and by[name]["macs"] < dense["macs"]
        model = io.load(tmp_path / name / "model.safetensors")
        assert sum(p.numel() for p in model.parameters()) == by[name]["params"]
    # IHT ends sparse at half the weights, stored sparse
    assert by["iht"]["nonzero_params"] < 0.55 * dense["params"]
    sparse = surgery.load_sparse(tmp_path / "iht" / "model.safetensors")
    assert sum(int((p != 0).sum()) for p in sparse.parameters()) == by["iht"]["nonzero_params"]
    assert by["iht"]["file_bytes"] < 0.7 * dense["file_bytes"]
    rep = json.loads((tmp_path / "sght" / "report.json").read_text())
    assert rep["figures"]["method"] == "sght"
