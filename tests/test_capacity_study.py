"""The capacity study: its decision rule with hand-worked numbers, the calibration search and the
lr extension on made-up runs, the cut rule, and the whole protocol on a tiny setting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import capacity_study as cs  # noqa: E402
import study_stats as st  # noqa: E402

from mobile_vmoe.errors import MvmoeError  # noqa: E402


def _cmp(arm, ref, diffs, ref_top1=50.0):
    return {"arm": arm, "ref": ref, "ref_top1": ref_top1, **st.paired(diffs, min_gain=0.0)}


# ---------------------------------------------------------------------------- decision rule
def test_relative_margin_and_headroom_by_hand():
    # dense at 50 %: 5 % of its errors is 2.5 points. moe-all +6 (sd 1): headroom.
    found = [_cmp("moe-all", "dense", [5, 6, 7, 6, 6]),
             _cmp("moe-sc", "dense", [2.6, 3.0, 2.8, 3.2, 2.4]),  # +2.8: 5.6 % of the errors, clear
             _cmp("moe-e2e", "dense", [1.0, 1.2, 0.8, 1.1, 0.9]),  # +1.0: clear but 2 % of the errors
             _cmp("moe-planted", "dense", [-3, -2.5, -3.5, -3, -3])]  # a clear loss
    out = {c["arm"]: c for c in cs.judge(found)}
    assert out["moe-all"]["verdict"] == "headroom"
    assert out["moe-sc"]["error_share"] == pytest.approx(2.8 / 50) and out["moe-sc"]["verdict"] == "supports"
    assert out["moe-e2e"]["verdict"] == "inconclusive"  # gains, but under the 5 % margin
    assert out["moe-planted"]["verdict"] == "contradicts"
    # Holm over 4: the smallest p is multiplied by 4; Bonferroni bounds use t_{1 - 0.05/4, 4}
    c = out["moe-sc"]
    q = st.t_ppf(1 - 0.05 / 4, 4)
    assert c["lower_bonf"] == pytest.approx(2.8 - q * c["se"]) and c["lower_bonf"] < c["lower90"]
    # without headroom nothing can contradict: the same loss reads inconclusive
    found[0] = _cmp("moe-all", "dense", [-1, 1, 0.5, -0.5, 0])
    out = {c["arm"]: c for c in cs.judge(found)}
    assert out["moe-all"]["verdict"] == "inconclusive" and out["moe-planted"]["verdict"] == "inconclusive"
    found[0] = _cmp("moe-all", "dense", [-2, -2.5, -1.5, -2, -2])
    assert cs.judge(found)[0]["verdict"] == "no headroom"


def test_error_share_uses_the_reference_errors():
    # the same +1 point removes 10 % of a 90 % model's errors and 2 % of a 50 % model's
    hi = cs.judge([_cmp("moe-sc", "dense", [0.9, 1.1, 1.0], ref_top1=90.0)])[0]
    lo = cs.judge([_cmp("moe-sc", "dense", [0.9, 1.1, 1.0], ref_top1=50.0)])[0]
    assert hi["error_share"] == pytest.approx(0.1) and lo["error_share"] == pytest.approx(0.02)
    assert hi["verdict"] == "supports" and lo["verdict"] == "inconclusive"


# ------------------------------------------------------------------- calibration and lr, faked
class _Args:
    data, sizes, epochs, jobs, cal_lr, cal_rounds = "graded:12:3:10", ["3x16"], 2, 1, 0.024, 3
    lr_grid, lr_extensions = [0.012, 0.024, 0.048], 2


def _fake_dense(curve_of):
    def run(data, size, lr, epochs, holdout, out, extra, kind="lr"):
        level = float(data.rsplit(":", 1)[1])
        top1 = curve_of(level, lr)
        return {"kind": kind, "data": data, "size": size, "lr": lr, "holdout": holdout, "holdout_top1": top1,
                "train_top1": top1 + 2, "gap": 2.0, "curve": [top1] * 5, "ari": {"counts": 0.5, "soft": 0.6},
                "finished": "t", "dir": "d"}
    return run


def test_calibration_bisects_towards_the_band(monkeypatch, tmp_path):
    # holdout top-1 = 90 - 60 level: 40-60 % for levels 0.5-0.833
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 90 - 60 * lv))
    res = {"runs": []}
    cs.calibrate(_Args(), tmp_path, res, lambda: None, {})
    cal = res["calibration"]
    # round 0 tries 0.5 (60.0: in band) and 1.0 (30.0): 0.5 is chosen, one round
    assert [r["level"] for r in cal["tried"]] == [0.5, 1.0] and cal["level"] == 0.5 and cal["in_band"]
    assert cal["data"] == "graded:12:3:10:0.5"
    # a steeper curve: round 0 both under 40 -> interval [0, 0.5] -> 0.1667 (65) and 0.3333 (25) ...
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 90 - 200 * lv))
    res = {"runs": []}
    cs.calibrate(_Args(), tmp_path, res, lambda: None, {})
    cal = res["calibration"]
    assert [r["level"] for r in cal["tried"][:2]] == [0.5, 1.0] and cal["tried"][2]["level"] == pytest.approx(0.1667)
    assert cal["in_band"] and 40 <= 90 - 200 * cal["level"] <= 60
    # never in band: the level closest to 50 % is used and the study says it missed
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 95.0))
    res = {"runs": []}
    cs.calibrate(_Args(), tmp_path, res, lambda: None, {})
    assert not res["calibration"]["in_band"] and len(res["calibration"]["tried"]) == 6


def test_study_stops_before_its_arms_when_the_calibration_misses(monkeypatch, tmp_path):
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 95.0))
    args = ["--data", "graded:12:3:10", "--sizes", "3x16", "--seeds", "2", "--epochs", "2", "--jobs", "1",
            "--no-probe", "--out", str(tmp_path)]
    with pytest.raises(MvmoeError, match="calibration missed the band"):
        cs.main(args)
    res = json.loads((tmp_path / "results.json").read_text())
    assert not res["calibration"]["in_band"] and len(res["calibration"]["tried"]) == 6
    assert "1-calibration" in res["steps"] and "4-arms" not in res["steps"]


def test_lr_grid_extends_at_its_edge(monkeypatch, tmp_path):
    # holdout top-1 rises with lr up to 0.2: the grid's top edge wins twice, then the cap stops it
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 40 + 50 * min(lr, 0.2)))
    res = {"runs": [], "lr": {}, "calibration": {"data": "graded:12:3:10:0.5"}}
    cs.lr_step(_Args(), tmp_path, res, lambda: None, {}, ["3x16"])
    v = res["lr"]["graded:12:3:10:0.5|3x16"]
    assert v["grid"] == pytest.approx([0.012, 0.024, 0.048, 0.096, 0.192]) and v["extensions"] == 2
    assert v["lr"] == pytest.approx(0.192)
    # an inner optimum: no extension
    monkeypatch.setattr(cs, "run_holdout_dense", _fake_dense(lambda lv, lr: 50 - abs(lr - 0.024) * 100))
    res = {"runs": [], "lr": {}, "calibration": {"data": "graded:12:3:10:0.5"}}
    cs.lr_step(_Args(), tmp_path, res, lambda: None, {}, ["3x16"])
    assert res["lr"]["graded:12:3:10:0.5|3x16"]["extensions"] == 0


def test_method_choice_prefers_the_smaller_holdout_and_counts_on_ties(monkeypatch, tmp_path):
    def fake(data, size, lr, epochs, holdout, out, extra, kind="lr"):
        ari = {0.1: {"counts": 0.30, "soft": 0.71}, 0.2: {"counts": 0.40, "soft": 0.72}}[holdout]
        return {**_fake_dense(lambda lv, lr: 50.0)(data, size, lr, epochs, holdout, out, extra, kind), "ari": ari}

    monkeypatch.setattr(cs, "run_holdout_dense", fake)
    data = "graded:12:3:10:0.5"
    res = {"runs": [fake(data, "3x16", 0.024, 2, 0.1, None, {})], "lr": {f"{data}|3x16": {"lr": 0.024}},
           "calibration": {"data": data}, "method": None}
    cs.method_step(_Args(), tmp_path, res, lambda: None, {})
    assert res["method"]["chosen"] == {"confusion": "soft", "holdout": 0.1, "ari": 0.71}  # 0.72 - 0.71 < 0.02
    assert len(res["method"]["candidates"]) == 4 and [r["holdout"] for r in res["runs"]] == [0.1, 0.2]


# ------------------------------------------------------------------------------- cut rule
def test_cut_rule_sizes_then_seeds_then_arms():
    probe = {}
    for size, f in (("6x32", 1.0), ("6x48", 2.0)):
        for kind, k in (("dense", 1.0), ("moe", 1.0), ("moe-all", 2.5)):
            probe[(size, kind)] = {"train_epoch_s": 10 * f * k, "eval_s": 1.0, "setup_s": 5.0}
    args = (probe, ["6x32", "6x48"], 5, list(cs.ARMS), 12, [0.012, 0.024, 0.048], 3, 2)
    full = cs.plan(*args, budget_min=1e9)
    assert full["cuts"] == [] and full["seeds"] == 5
    one_size = cs.project(probe, ["6x32"], 5, list(cs.ARMS), 12, [0.012, 0.024, 0.048], 3, 2)
    three = cs.project(probe, ["6x32"], 3, list(cs.ARMS), 12, [0.012, 0.024, 0.048], 3, 2)
    p = cs.plan(*args, budget_min=one_size + 0.1)
    assert p["sizes"] == ["6x32"] and p["seeds"] == 5 and p["cuts"] == ["size 6x48"]
    p = cs.plan(*args, budget_min=three + 0.1)
    assert p["seeds"] == 3 and p["arms"] == list(cs.ARMS) and p["cuts"][-1] == "seeds to 3"
    p = cs.plan(*args, budget_min=1.0)
    assert p["seeds"] == 3 and p["arms"] == ["dense", "moe-all", "moe-sc"] and p["over_budget"]


def test_dense_long_matches_the_upcycled_compute():
    # dense stage on 90 % + an MoE stage of (almost) the dense MACs: about 1.9 x the epochs
    assert cs.long_epochs("6x32", "graded:500:10:100:0.5", 12, 0.1) == 23
    assert cs.long_epochs("6x32", "graded:500:10:100:0.5", 12, 0.2) == 22


# ---------------------------------------------------------------------------------- tiny run
@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "capacity"
    assert cs.main(["--quick", "--jobs", "1", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["steps"]) == {"probe", "1-calibration", "2-lr", "3-superclass-method", "4-arms"}
    assert all(v.get("finished") for v in res["steps"].values())
    cal = res["calibration"]
    assert len(cal["tried"]) == 2 and cal["data"].startswith("graded:12:3:10:")
    assert res["method"]["chosen"]["confusion"] in ("counts", "soft") and len(res["method"]["candidates"]) == 4
    arms = {(r["seed"], r["arm"]) for r in res["runs"] if r["kind"] == "arm"}
    want = [a for a in cs.ARMS if cs.has_moe_init() or a not in cs.UPCYCLED]
    assert arms == {(s, a) for s in (0, 1) for a in want}
    by = {(r["seed"], r["arm"]): r for r in res["runs"] if r["kind"] == "arm"}
    assert by[(0, "moe-all")]["macs"] > by[(0, "moe-e2e")]["macs"]  # every expert active
    assert -1 <= by[(0, "moe-sc")]["ari"] <= 1 and 0 <= by[(0, "moe-planted")]["router_holdout_top1"] <= 100
    text = capsys.readouterr().out
    assert "SMOKE CHECK" in text and "Bonferroni-adjusted bounds" in text and "moe-all - dense" in text
    n = len(res["runs"])  # resuming a finished study trains nothing more
    assert cs.main(["--quick", "--jobs", "1", "--out", str(out)]) == 0
    assert len(json.loads((out / "results.json").read_text())["runs"]) == n


def test_gpu_variant_dry_run_plans_on_cpu(tmp_path):
    import capacity_gpu

    assert capacity_gpu.main(["--dry", "--out", str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert "graded:500:10:300" in plan["capacity_study_args"] and "6x32/moe-all" in plan["checked"]


def test_a_continuing_study_keeps_the_times_of_the_steps_it_had_finished(monkeypatch):
    res = {"steps": {}}
    clock = iter(["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T00:00:05Z"])
    monkeypatch.setattr(cs.time, "strftime", lambda fmt, t=None: next(clock))
    with cs.step(res, "1-calibration", lambda: None):
        pass
    with cs.step(res, "1-calibration", lambda: None):  # the next invocation passes through it
        pass
    assert res["steps"]["1-calibration"] == {"started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T01:00:00Z"}
