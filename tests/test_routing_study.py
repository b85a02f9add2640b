"""The routing study's statistics with hand-worked numbers, its cut rule, its tables and gates on
made-up results, and the whole protocol on a tiny setting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import routing_study as rs  # noqa: E402
import study_stats as st  # noqa: E402

from mobile_vmoe.errors import MvmoeError  # noqa: E402


# --------------------------------------------------------------------------------- statistics
def test_t_distribution_closed_form_by_hand():
    assert st.t_cdf_closed_form(0.0, 7) == pytest.approx(0.5)
    assert st.t_cdf_closed_form(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1) / pi
    assert st.t_cdf_closed_form(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))  # 1/2 + x / (2 sqrt(2 + x^2))
    assert st.t_cdf_closed_form(-1.0, 2) == pytest.approx(0.5 - 1 / (2 * math.sqrt(3)))
    # printed tables: t_{0.95, 4} = 2.132, t_{0.95, 9} = 1.833, t_{0.975, 3} = 3.182
    for q, df, t in ((0.95, 4, 2.1318), (0.95, 9, 1.8331), (0.975, 3, 3.1824)):
        assert st.t_cdf_closed_form(t, df) == pytest.approx(q, abs=2e-5)
        assert st.t_ppf(q, df) == pytest.approx(t, abs=1e-3)


def test_paired_interval_by_hand():
    c = st.paired([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), se sqrt(2.5 / 5) = 0.70711, t_{0.95, 4} = 2.13185 -> 3 -+ 1.50745
    assert (c["mean"], c["df"]) == (3.0, 4) and c["se"] == pytest.approx(0.707107, abs=1e-6)
    assert (c["lower90"], c["upper90"]) == (pytest.approx(1.49255, abs=1e-4), pytest.approx(4.50745, abs=1e-4))
    # p(gain >= 2) = P(T_4 <= (3 - 2) / 0.70711 = 1.41421) = 0.88483
    assert c["p_short"] == pytest.approx(0.88483, abs=1e-4)
    with pytest.raises(ValueError):
        st.paired([1.0])


def test_holm_by_hand():
    # sorted 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone: 0.06
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert st.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_verdict_rule_and_holm_changes_it():
    def c(mean, p_gain, p_short):
        return {"mean": mean, "p_gain": p_gain, "p_short": p_short}

    alone = st.verdicts([c(3.0, 0.01, 0.9)])
    assert alone[0]["verdict"] == "supports"
    assert st.verdicts([c(1.5, 0.001, 0.3)])[0]["verdict"] == "inconclusive"  # significant but < 2 points
    assert st.verdicts([c(0.0, 0.5, 0.01)])[0]["verdict"] == "contradicts"
    # the same 0.03 supports alone, not among three comparisons (0.03 x 3 = 0.09 >= 0.05)
    assert st.verdicts([c(3.0, 0.03, 0.9)])[0]["verdict"] == "supports"
    three = st.verdicts([c(3.0, 0.03, 0.9), c(0.0, 0.6, 0.2), c(0.0, 0.7, 0.3)])
    assert [v["verdict"] for v in three] == ["inconclusive"] * 3 and three[0]["p_gain_holm"] == pytest.approx(0.09)


def test_flattening_slope_by_hand():
    assert st.slope([50.0, 50.5, 51.0, 51.5, 52.0]) == pytest.approx(0.5)
    # last five around 60: centred x -2..2, sum x (y - 60.04) = 0.08 - 0.06 + 0 + 0.16 - 0.08 = 0.10 -> / 10
    curve = [10.0, 30.0, 60.0, 60.1, 59.9, 60.2, 60.0]
    assert st.flattened(curve) == {"slope": pytest.approx(0.01), "flat": True}
    assert st.flattened([40.0, 41.0, 42.0, 43.0, 44.0])["flat"] is False  # 1 point per epoch
    assert st.flattened([40.0, 41.0]) == {"slope": None, "flat": False}


# -------------------------------------------------------------------------------- cut rule
def _probe(sizes=("6x32", "6x64")):
    # per size: dense 1 s / epoch, moe 1 s, token 1 s; eval, setup and batch-1 scoring free (x2 at 6x64)
    rows = {}
    for size in sizes:
        f = 2.0 if size == "6x64" else 1.0
        for kind in ("dense", "moe", "token"):
            rows[(size, kind)] = {"train_epoch_s": f, "eval_s": 0.0, "setup_s": 0.0, "batch1_s": 0.0}
    return rows


def test_projection_and_cuts_by_hand():
    p = _probe()
    # one size, 10 epochs: lr 0.9 x 10 = 9 s; dense 10, moe-sc 9 + 10, planted 10, e2e 10, token 10 -> 59 s a seed
    assert rs.run_seconds(p, "6x32", "moe-sc", 10) == pytest.approx(19.0)
    assert rs.run_seconds(p, "6x32", "lr", 10) == pytest.approx(9.0)
    # 2 datasets x (3 lr x 9 + 2 seeds x 59) = 290 s, 1 job -> 4.833 min
    assert rs.project(p, ["a", "b"], ["6x32"], list(rs.ARMS), 2, 10, [1, 2, 3], 1) == pytest.approx(290 / 60)
    full = rs.plan(p, ["a", "b"], ["6x64", "6x32"], 2, 10, [1, 2, 3], 1, budget_min=100)
    assert full["cuts"] == [] and full["sizes"] == ["6x32", "6x64"]  # 3 x 290 s = 14.5 min
    one = rs.plan(p, ["a", "b"], ["6x64", "6x32"], 2, 10, [1, 2, 3], 1, budget_min=10)
    assert one["cuts"] == ["size 6x64"] and one["sizes"] == ["6x32"] and not one["over_budget"]
    # 4 min: drop the control's token (-20 s), then its moe-e2e (-20 s): 250 s = 4.17 min, still over
    tight = rs.plan(p, ["a", "b"], ["6x32", "6x64"], 2, 10, [1, 2, 3], 1, budget_min=4)
    assert tight["cuts"] == ["size 6x64", "control arm token", "control arm moe-e2e"]
    assert tight["control_arms"] == ["dense", "moe-sc", "moe-sc-planted"] and tight["over_budget"]
    assert tight["projected_min"] == pytest.approx(250 / 60, abs=0.05)


# ------------------------------------------------------------------------ tables and gates
def _results(disjoint_gain=(4.0, 5.0, 3.0, 4.0, 4.0), router=90.0, flat=True, commit="abc"):
    runs = []
    for seed, g in enumerate(disjoint_gain):
        base = 50.0 + seed
        for arm, top1 in (("dense", base), ("moe-sc", base + g), ("moe-sc-planted", base + g),
                          ("moe-e2e", base), ("token", base - 1.0)):
            runs.append({"kind": "arm", "data": "d", "size": "6x32", "seed": seed, "arm": arm, "top1": top1,
                         "macs": 1e6, "train_macs": 2e12 if arm == "moe-sc" else 1e12, "train_seconds": 60.0,
                         "router_holdout_top1": router if arm in rs.SUPERCLASS_ARMS else None,
                         "router_eval_top1": 80.0 if arm in rs.SUPERCLASS_ARMS else None,
                         "ari": 0.9 if arm == "moe-sc" else None, "top1_batch1": top1 if arm == "token" else None,
                         "top1_group": top1 + 1 if arm == "token" else None, "commit": commit})
    return {"provenance": {"command": "x"}, "quick": False, "plan": None, "runs": runs,
            "lr": {"d|6x32": {"lr": 1e-3, "holdout_top1": {"0.001": 50.0}, "slope": 0.05 if flat else 0.5,
                              "flat": flat}}}


def test_verdicts_from_results_by_hand():
    cs = {(c["arm"], c["ref"]): c for c in rs.comparisons(_results(), "d")}
    sc = cs[("moe-sc", "dense")]
    # diffs 4 5 3 4 4: mean 4, sd sqrt(0.5), se 0.31623 -> 90 % CI 4 -+ 0.674; 5 comparisons in the family
    assert sc["diffs"] == [4.0, 5.0, 3.0, 4.0, 4.0] and sc["lower90"] == pytest.approx(4 - 2.13185 * 0.316228, abs=1e-4)
    assert sc["reading"] == "supports"
    assert cs[("moe-e2e", "dense")]["reading"] == "contradicts"  # exactly 0 every seed: se 0
    assert cs[("token", "dense")]["mean"] == pytest.approx(-1.0)
    gated = {(c["arm"], c["ref"]): c["reading"] for c in rs.comparisons(_results(router=80.0), "d")}
    assert gated[("moe-sc", "dense")] == "not read: router gate failed (moe-sc)"
    assert gated[("moe-e2e", "dense")] == "contradicts"
    unflat = rs.comparisons(_results(flat=False), "d")
    assert all(c["reading"].startswith("not read: dense not flattened") for c in unflat)


def test_summary_names_commit_compute_and_refuses_mixed_commits():
    res = _results()
    text = rs.summarize(res)
    assert "commit(s): abc" in text and "wall:" not in text
    assert "wall: 3.5 min (1.5 + 2.0 per invocation)" in rs.summarize({**res, "wall_minutes": [1.5, 2.0]})
    assert "| d | 6x32 | moe-sc | 5 | 56.0 ± 1.6 | 90.0 ± 0.0 / 80.0 ± 0.0 | 0.90 (min 0.90)" in text
    assert "2000 (2.00x)" in text  # training GMACs of moe-sc, dense stage included, against dense
    res["runs"][0]["commit"] = "def"
    with pytest.raises(MvmoeError, match="2 different commits"):
        rs.summarize(res)
    assert "commit(s): abc, def" in rs.summarize(res, allow_mixed=True)
    res["quick"] = True
    assert "SMOKE CHECK" in rs.summarize(res, allow_mixed=True)


# ---------------------------------------------------------------------------------- tiny run
@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--data", "shapes-disjoint:4:2", "--sizes", "3x16", "--seeds", "2", "--epochs", "5",
            "--lr-grid", "1e-3", "3e-3", "--jobs", "1", "--no-probe", "--out", str(out)]
    assert rs.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["provenance"]) == {"commit", "dirty", "command", "versions", "host"}
    lr_runs = [r for r in res["runs"] if r["kind"] == "lr"]
    assert sorted(r["lr"] for r in lr_runs) == [1e-3, 3e-3] and all(len(r["curve"]) == 5 for r in lr_runs)
    choice = res["lr"]["shapes-disjoint:4:2|3x16"]
    assert choice["lr"] in (1e-3, 3e-3) and "slope" in choice
    arms = {(r["seed"], r["arm"]) for r in res["runs"] if r["kind"] == "arm"}
    assert arms == {(s, a) for s in (0, 1) for a in rs.ARMS}
    by = {(r["seed"], r["arm"]): r for r in res["runs"] if r["kind"] == "arm"}
    assert by[(0, "token")]["top1"] == by[(0, "token")]["top1_batch1"] and "top1_group" in by[(0, "token")]
    assert 0 <= by[(0, "moe-sc-planted")]["router_holdout_top1"] <= 100 and -1 <= by[(0, "moe-sc")]["ari"] <= 1
    assert by[(0, "moe-sc")]["train_macs"] > by[(0, "dense")]["train_macs"]  # the dense stage counts
    planted = json.loads((out / "shapes-disjoint-4-2" / "planted_superclasses.json").read_text())
    assert planted["class_to_superclass"] == [0, 1, 0, 1]
    text = capsys.readouterr().out
    assert "moe-sc - moe-e2e" in text and "| shapes-disjoint:4:2 | 3x16 | token |" in text
    # the exploratory per-superclass table: balanced classes, so its row means are the arms' top-1
    table = rs.per_superclass(res, "shapes-disjoint:4:2", "3x16").splitlines()
    for arm in ("dense", "token"):
        cells = [float(v) for v in next(l for l in table if l.startswith(f"| {arm} |")).strip("|").split("|")[1:]]
        top1 = [r["top1"] for r in res["runs"] if r["kind"] == "arm" and r["arm"] == arm]
        assert sum(cells) / len(cells) == pytest.approx(sum(top1) / len(top1), abs=0.06)
    # resuming a finished study trains nothing more
    n = len(res["runs"])
    assert rs.main(args) == 0 and len(json.loads((out / "results.json").read_text())["runs"]) == n


# ------------------------------------------------------------------------- GPU script, dry
def test_gpu_script_dry_run_plans_on_cpu(tmp_path, capsys):
    import study_gpu

    assert study_gpu.main(["--dry", "--out", str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    # 2 data x 2 sizes x 3 lr; 2 x 2 x 5 seeds x 5 arms; a probe of 3 kinds per size
    assert (plan["lr_runs"], plan["arm_runs"], plan["probe_runs"]) == (12, 100, 6)
    args = plan["routing_study_args"]
    assert "12x192" in args and "--keep-largest" in args and "shapes-disjoint:100:10:300" in args
    assert plan["provenance"]["versions"]["torch"]


def test_gpu_script_without_cuda_is_one_line_error(tmp_path, monkeypatch):
    import study_gpu
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MvmoeError, match="no CUDA device"):
        study_gpu.main(["--out", str(tmp_path)])


# -------------------------------------------------------------------------- distillation 2x2
@pytest.mark.slow
def test_tiny_distillation_2x2(tmp_path, capsys):
    import distill_study

    out = tmp_path / "kd"
    args = ["--data", "shapes-disjoint:4:2", "--size", "3x16", "--seeds", "2", "--epochs", "1", "--jobs", "1",
            "--out", str(out)]
    assert distill_study.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["teacher"]["train_images"] == 216 and 0 <= res["teacher"]["top1"] <= 100  # 240 less the 10 % holdout
    assert {(r["arm"], r["seed"]) for r in res["runs"]} == {(a, s) for a in distill_study.ARMS for s in (0, 1)}
    kd = json.loads((out / "seed0" / "moe-sc-kd" / "summary.json").read_text())
    assert kd["teacher"]["model"] == "mobilenet_v3_small"
    # moe-sc-kd routes on moe-sc's superclasses of the same seed
    assert kd["superclasses_file"].endswith("seed0/moe-sc/superclasses.json")
    assert "moe-sc-kd - dense-kd" in capsys.readouterr().out


def test_gpu_script_refuses_an_over_budget_plan(tmp_path):
    import study_gpu

    plan = {"over_budget": True, "projected_min": 11.5, "cuts": ["size 6x64", "control arm token"], "budget_min": 7.0}
    (tmp_path / "results.json").write_text(json.dumps({"plan": plan}))
    with pytest.raises(MvmoeError, match="projects 11.5 min after every cut .size 6x64, control arm token., over the 7.0"):
        study_gpu.check_plan(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"plan": {**plan, "over_budget": False}}))
    study_gpu.check_plan(tmp_path)  # fits: no error


# ----------------------------------------------------------------------------- stopped runs
def test_a_stopped_run_is_continued_not_refused(tmp_path):
    from mobile_vmoe.train import resolve, train

    settings = {**rs.size_settings("3x16"), "batch_size": 16, "threads": 1}
    tcfg, bundle = resolve("vit-6x64-p32", "shapes-disjoint:4:2", settings, epochs=2, seed=0)
    where = tmp_path / "dense"
    stopped = train(tcfg.replace(stop_after_steps=3), bundle, where, superclasses="none", quiet=True)
    assert stopped["stopped"] and not (where / "summary.json").exists()  # as a killed study leaves it
    done = rs.train_or_continue(tcfg, bundle, where, "none")
    assert done["epochs"] == 2 and 0 <= done["top1"] <= 100 and (where / "summary.json").exists()
    again = rs.train_or_continue(tcfg, bundle, where, "none")  # finished: returned, not retrained
    assert again["top1"] == done["top1"]
    with pytest.raises(MvmoeError, match="holds a run with other settings"):
        rs.train_or_continue(tcfg.replace(lr=tcfg.lr * 2), bundle, where, "none")
