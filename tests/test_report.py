"""`mvmoe report` from fixture run directories (summary.json) and latency files (docs/formats.md)."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import run_summary
from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.artifact_name import artifact_stem, parse_artifact_name
from mobile_vmoe.profile.report import latency_column, make_report


@pytest.fixture
def runs(tmp_path):
    moe = tmp_path / "run_moe"
    (moe / "dense").mkdir(parents=True)
    (moe / "summary.json").write_text(json.dumps(run_summary()))
    (moe / "dense" / "summary.json").write_text(json.dumps(run_summary(
        model="vit-6x64-p8", top1=89.5, top5=99.0, router_superclass_top1=None, macs=5432704, params=314186,
        active_params=314186, routing="none", num_experts=0, expert_usage=None, superclass_names=None)))
    tok = tmp_path / "run_token"
    tok.mkdir()
    (tok / "summary.json").write_text(json.dumps(run_summary(model="vmoe-6x64-p8-e5-token", top1=90.0, routing="token",
                                                          router_superclass_top1=None, expert_usage=None)))
    lat = tmp_path / "lat_pte.json"
    lat.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_executorch-xnnpack_fp32.pte", "device": "local (Linux x86_64)",
                               "runtime": "executorch", "runs": 50, "min_ms": 0.5, "median_ms": 0.61234, "p90_ms": 0.7,
                               "mean_ms": 0.62}))
    lat2 = tmp_path / "lat_app.json"
    lat2.write_text(json.dumps({"artifact": "vit-6x64-p8_tflite_int8.tflite", "device": "Pixel 8 (Android 15)",
                                "runtime": "litert", "runs": 30, "min_ms": 1.0, "median_ms": 1.25, "p90_ms": 1.5,
                                "mean_ms": 1.3}))
    return [moe, tok], [lat, lat2]


def test_artifact_names():
    assert parse_artifact_name("vmoe-6x64-p32_executorch-xnnpack_fp32.pte") == {
        "model": "vmoe-6x64-p32", "target": "executorch", "backend": "xnnpack", "precision": "fp32", "dispatch": "gather"}
    assert parse_artifact_name("vit-6x64-p8_tflite_int8.tflite") == {
        "model": "vit-6x64-p8", "target": "tflite", "backend": None, "precision": "int8", "dispatch": "gather"}
    assert parse_artifact_name("m_onnx_fp32-dense.onnx")["dispatch"] == "dense"
    for model, target, backend, precision, dispatch in [("vmoe-6x64-p8-e5", "executorch", "xnnpack", "int8", "gather"),
                                                        ("vit-6x64-p32", "tflite", None, "fp16", "dense"),
                                                        ("m", "coreml", None, "fp32", "split")]:  # the writer's names read back
        name = artifact_stem(model, target, backend, precision, dispatch) + ".pte"
        assert parse_artifact_name(name) == {"model": model, "target": target, "backend": backend,
                                             "precision": precision, "dispatch": dispatch}
    assert latency_column({"artifact": "m_onnx_fp32.onnx", "device": "local"}) == "onnx fp32 @ local (ms)"
    assert latency_column({"artifact": "m_onnx_fp32-dense.onnx", "device": "local"}) == "onnx fp32 dense @ local (ms)"


def test_latency_goes_to_the_run_whose_checkpoint_made_the_artifact(tmp_path):
    """Two runs of one preset: each latency file names its checkpoint's sha256, so each row gets
    its own number, not the last file's."""
    import hashlib

    rows = {}
    for name, weights in (("run_a", b"weights A"), ("run_b", b"weights B")):
        d = tmp_path / name
        d.mkdir()
        (d / "model.pt").write_bytes(weights)
        (d / "summary.json").write_text(json.dumps(run_summary(checkpoint=str(d / "model.pt"), expert_usage=None)))
        lat = tmp_path / f"lat_{name}.json"
        lat.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": "local", "runtime": "onnxruntime",
                                   "runs": 3, "min_ms": 1.0, "median_ms": {"run_a": 1.5, "run_b": 2.5}[name],
                                   "p90_ms": 3.0, "mean_ms": 2.0, "checkpoint_sha256": hashlib.sha256(weights).hexdigest()}))
        rows[name] = (d, lat)
    stray = tmp_path / "lat_stray.json"
    stray.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": "local", "median_ms": 9.0,
                                 "checkpoint_sha256": "0" * 64}))
    paths = make_report([d for d, _ in rows.values()], [lat for _, lat in rows.values()], tmp_path / "rep",
                        published=False)
    by_run = {r["source"].split("/")[-1]: r for r in csv.DictReader(paths["table.csv"].open())}
    col = "latency_ms onnx fp32 @ local (ms)"
    assert float(by_run["run_a"][col]) == 1.5 and float(by_run["run_b"][col]) == 2.5
    assert len(by_run) == 2
    # a file of another checkpoint: refused, naming the file and the runs given (no invented row)
    with pytest.raises(MvmoeError, match=r"lat_stray\.json measured an artifact of checkpoint sha256 000000000000…, "
                                         r"made by none of the runs given \(.*run_a, .*run_b\)"):
        make_report([d for d, _ in rows.values()], [stray], tmp_path / "rep2", published=False)
    # a file whose checkpoint is run_a's but whose model is another preset: conflicting, refused
    wrong = tmp_path / "lat_wrong.json"
    wrong.write_text(json.dumps({**json.loads(rows["run_a"][1].read_text()), "model": "vmoe-12x192-p32",
                                 "macs": 123_000_000}))
    with pytest.raises(MvmoeError, match=r"lat_wrong\.json names model vmoe-12x192-p32, 123\.00M MACs but its "
                                         r"checkpoint_sha256 is the checkpoint of .*run_a \(vmoe-6x64-p8-e5"):
        make_report([rows["run_a"][0]], [wrong], tmp_path / "rep3", published=False)


def test_column_reads_the_carried_metadata_not_the_file_name():
    """A renamed artifact: its latency file still carries target, backend and precision from the
    .json, so the column says what ran (the name would say onnx fp32, or nothing at all)."""
    carried = {"device": "local", "target": "executorch", "backend": "xnnpack", "precision": "int8", "dispatch": "gather"}
    assert latency_column({"artifact": "renamed.pte", **carried}) == "executorch-xnnpack int8 @ local (ms)"
    assert latency_column({"artifact": "m_onnx_fp32.onnx", **carried}) == "executorch-xnnpack int8 @ local (ms)"
    split = {**carried, "target": "tflite", "backend": None, "precision": "fp32", "dispatch": "split"}
    assert latency_column({"artifact": "m", **split, "rss_mib": 9.0, "loader": "mmap"}) == "tflite fp32 split mmap @ local (MiB)"


def test_run_hash_comes_from_summary_json_and_an_old_summary_is_hashed_once(tmp_path, monkeypatch):
    """summary.json's checkpoint_sha256 matches the latency file without reading model.pt; a summary
    without the key (an older run) has its model.pt hashed, once for all the files that ask."""
    import hashlib

    from mobile_vmoe.profile import report

    new, old = tmp_path / "new", tmp_path / "old"
    for d, weights in ((new, b"new weights"), (old, b"old weights")):
        d.mkdir()
        (d / "model.pt").write_bytes(weights)
    sha_new, sha_old = hashlib.sha256(b"new weights").hexdigest(), hashlib.sha256(b"old weights").hexdigest()
    (new / "summary.json").write_text(json.dumps(run_summary(checkpoint=str(new / "model.pt"), checkpoint_sha256=sha_new)))
    (old / "summary.json").write_text(json.dumps(run_summary(checkpoint=str(old / "model.pt"))))
    hashed = []
    real = report.file_sha256
    monkeypatch.setattr(report, "file_sha256", lambda p: hashed.append(p) or real(p))
    files = []
    for i, (sha, device) in enumerate([(sha_new, "a"), (sha_old, "a"), (sha_new, "b"), (sha_old, "b")]):
        f = tmp_path / f"lat{i}.json"
        f.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": device, "median_ms": 1.0 + i,
                                 "checkpoint_sha256": sha}))
        files.append(f)
    paths = make_report([new, old], files, tmp_path / "rep", published=False)
    by_run = {r["source"].split("/")[-1]: r for r in csv.DictReader(paths["table.csv"].open())}
    assert float(by_run["new"]["latency_ms onnx fp32 @ a (ms)"]) == 1.0
    assert float(by_run["old"]["latency_ms onnx fp32 @ a (ms)"]) == 2.0
    assert float(by_run["new"]["latency_ms onnx fp32 @ b (ms)"]) == 3.0
    assert float(by_run["old"]["latency_ms onnx fp32 @ b (ms)"]) == 4.0
    assert hashed == [old / "model.pt"]  # new's hash came from its summary.json


@pytest.mark.parametrize("key,value", [("median_ms", -5.0), ("median_ms", 0), ("median_ms", float("nan")),
                                       ("median_ms", float("inf")), ("median_ms", "1.0"), ("p90_ms", -1.0),
                                       ("median_ms", None)])
def test_impossible_latencies_are_refused_naming_the_file_and_key(tmp_path, key, value):
    d = _run(tmp_path, "r")
    lat = {"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": "local", "runtime": "onnxruntime", "runs": 5,
           "min_ms": 1.0, "median_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0, key: value}
    f = tmp_path / "lat.json"
    f.write_text(json.dumps(lat))  # json.dumps writes NaN / Infinity, as a hand edit might
    with pytest.raises(MvmoeError, match=rf"lat\.json: {key} is .*must be a finite number above zero"):
        make_report([d], [f], tmp_path / "o", published=False)
    mem = {"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": "local", "loader": "file", "rss_mib": -3.0}
    f.write_text(json.dumps(mem))
    with pytest.raises(MvmoeError, match=r"rss_mib is -3\.0; a resident size must be"):
        make_report([d], [f], tmp_path / "o", published=False)


def test_memory_files_get_a_memory_column_beside_latency(tmp_path):
    """A `profile memory --out` file (rss_mib) joins the run of its checkpoint like a latency file,
    in a column of its own per loader."""
    import hashlib

    from conftest import mvmoe

    d = tmp_path / "run"
    d.mkdir()
    (d / "model.pt").write_bytes(b"weights")
    (d / "summary.json").write_text(json.dumps(run_summary(checkpoint=str(d / "model.pt"), expert_usage=None)))
    sha = hashlib.sha256(b"weights").hexdigest()
    files = []
    for name, extra in (("lat", {"median_ms": 1.5}), ("mem", {"rss_mib": 17.25, "loader": "mmap"})):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_executorch-xnnpack_fp32-split.pte", "device": "local",
                                 "checkpoint_sha256": sha, **extra}))
        files.append(f)
    assert latency_column(json.loads(files[1].read_text())) == "executorch-xnnpack fp32 split mmap @ local (MiB)"
    code, out, err = mvmoe("report", str(d), "--latency", str(files[0]), "--memory", str(files[1]),
                           "--out", str(tmp_path / "rep"), "--no-published")
    assert code == 0, err
    row = next(csv.DictReader((tmp_path / "rep" / "table.csv").open()))
    assert float(row["latency_ms executorch-xnnpack fp32 split @ local (ms)"]) == 1.5
    assert float(row["memory_mib executorch-xnnpack fp32 split mmap @ local (MiB)"]) == 17.25
    assert "memory executorch-xnnpack fp32 split mmap @ local (MiB)" in (tmp_path / "rep" / "table.md").read_text()


@pytest.mark.parametrize("value", ["91.2%", None, True])
def test_non_numeric_top1_names_the_file(tmp_path, value):
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(run_summary(top1=value)))
    if value is None:  # null is allowed (an unfinished metric); only text or booleans are wrong
        make_report([d], [], tmp_path / "rep", published=False)
        return
    with pytest.raises(MvmoeError, match=f"run/summary.json: top1 is {value!r}, expected a number"):
        make_report([d], [], tmp_path / "rep", published=False)


def test_report_files(runs, tmp_path):
    run_dirs, lats = runs
    out = tmp_path / "rep"
    paths = make_report(run_dirs, lats, out)
    md = paths["table.md"].read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    head, body = lines[0], {ln.split(" | ")[0][2:]: ln for ln in lines[1:]}
    assert "latency executorch-xnnpack fp32 @ local (Linux x86_64) (ms)" in head
    assert "latency tflite int8 @ Pixel 8 (Android 15) (ms)" in head
    # the MoE run, its dense stage (found in DIR/dense), the token run, 4 published rows
    assert list(body)[:3] == ["vmoe-6x64-p8-e5", "vit-6x64-p8", "vmoe-6x64-p8-e5-token"]
    assert sum("[published]" in k for k in body) == 4
    moe = body["vmoe-6x64-p8-e5"].split(" | ")
    # model dataset routing arm epochs MACs params active top1 top5 router | pte latency | tflite latency
    assert moe[1:11] == ["digits", "image", "moe-sc", "8", "5.43M", "579.34K", "314.64K", "91.25", "99.50", "88.00"]
    assert moe[11] == "0.612" and moe[12] == "-" and moe[13] == "tmp0/run_moe |".replace("tmp0", tmp_path.name)
    dense = body["vit-6x64-p8"].split(" | ")
    assert dense[2:4] == ["none", "superclass-source"]  # the dense stage is marked, not the baseline
    assert dense[11] == "-" and dense[12] == "1.250" and dense[13] == "run_moe/dense |"
    assert "not the equal-budget dense baseline" in md and "not measured here" in md
    assert body["vmoe-6x64-p8-e5-token"].split(" | ")[3] == "token"

    rows = list(csv.DictReader(paths["table.csv"].open()))
    by = {r["model"]: r for r in rows}
    assert int(by["vmoe-6x64-p8-e5"]["active_macs"]) == 5433024
    assert float(by["vmoe-6x64-p8-e5"]["latency_ms executorch-xnnpack fp32 @ local (Linux x86_64) (ms)"]) == 0.61234
    assert by["vit-6x64-p8"]["source"].endswith("run_moe/dense")
    pub = by["Mobile V-MoE 12x192 p32 (E=10, k=1)"]
    assert pub["published"] == "1" and float(pub["top1"]) == 62.90 and pub["dataset"] == "ImageNet-1k"
    # 12 blocks x (4*192^2*50 attn proj + 2*50^2*192 attn + 8*192^2*50 MLP) + patch + head, the gather path
    assert 300e6 < int(pub["active_macs"]) < 312e6


def test_plots_are_pngs(runs, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    paths = make_report(*runs, tmp_path / "rep", published=False)
    for name in ("flops_vs_accuracy.png", "routing.png"):
        p = paths[name]
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.shape[0] > 300 and img.shape[1] > 400
        assert np.std(img[..., :3]) > 0.05  # something was drawn, not a blank canvas


def test_routing_plot_without_moe_runs(runs, tmp_path):
    run_dirs, _ = runs
    paths = make_report([run_dirs[1]], [], tmp_path / "rep", published=False)
    md = paths["table.md"].read_text()
    assert "published" not in md and paths["routing.png"].stat().st_size > 1000


def test_report_errors(runs, tmp_path):
    run_dirs, lats = runs
    with pytest.raises(MvmoeError, match="run directory not found"):
        make_report([tmp_path / "nope"], [], tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MvmoeError, match="no summary.json"):
        make_report([tmp_path / "empty"], [], tmp_path / "o")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"artifact": "x.pte"}))
    with pytest.raises(MvmoeError, match="missing key.*device, median_ms"):
        make_report(run_dirs, [bad], tmp_path / "o")
    bad.write_text("{not json")
    with pytest.raises(MvmoeError, match="not valid JSON"):
        make_report(run_dirs, [bad], tmp_path / "o")
    with pytest.raises(MvmoeError, match="at least one RUN_DIR"):
        make_report([], [], tmp_path / "o")


def test_cli_report(runs, tmp_path):
    from typer.testing import CliRunner

    from mobile_vmoe.cli import app

    run_dirs, lats = runs
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["report", *map(str, run_dirs), "--latency", str(lats[0]), str(lats[1]),
                                 "--out", str(out), "--no-published"])  # a positional .json is a latency file
    assert r.exit_code == 0, r.output
    assert "|" not in r.stdout  # the wide table goes to the file; the console gets a short summary
    assert "vmoe-6x64-p8-e5 · digits · moe-sc · 8 ep: top-1 91.25 %" in r.stdout
    assert "3 runs, 2 latency/memory columns, 0 published reference rows" in r.stdout
    md = (out / "table.md").read_text()
    assert "| vmoe-6x64-p8-e5 | digits |" in md
    assert "tflite int8 @ Pixel 8 (Android 15)" in md and "executorch-xnnpack fp32 @ local" in md
    assert sorted(p.name for p in out.iterdir()) == ["flops_vs_accuracy.png", "routing.png", "table.csv", "table.md"]


def test_seeds_aggregate_into_mean_and_std(tmp_path):
    """Three seeds of one arm and model: one point, mean and sample std by hand; a different epoch
    count is another point (never averaged together)."""
    from mobile_vmoe.profile.report import aggregate, load_runs

    dirs = []
    for seed, top1 in enumerate((90.0, 92.0, 94.0)):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(run_summary(seed=seed, top1=top1, superclass_names=None,
                                                            expert_usage=None, routing="image")))
        dirs.append(d)
    longer = tmp_path / "long"
    longer.mkdir()
    (longer / "summary.json").write_text(json.dumps(run_summary(epochs=30, top1=95.0, superclass_names=None,
                                                             expert_usage=None)))
    points = {(p.arm, p.epochs): p for p in aggregate(load_runs(dirs + [longer]))}
    p = points[("moe-e2e", 8)]
    assert p.mean == pytest.approx(92.0) and p.std == pytest.approx(2.0)  # sqrt((4 + 0 + 4) / 2)
    assert points[("moe-e2e", 30)].top1 == [95.0]
    md = make_report(dirs + [longer], [], tmp_path / "rep", published=False)["table.md"].read_text()
    assert "| digits | moe-e2e | vmoe-6x64-p8-e5 | 8 | 5.43M | 3 | 92.00 +- 2.00 |" in md


def _run(tmp_path, name, **kw):
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(run_summary(**{"superclass_names": None, "expert_usage": None, **kw})))
    return d


def test_plot_lines_join_only_runs_that_differ_in_size(tmp_path):
    """MoE runs of 45, 6 and 1 epochs and a k=2 run are four points, never one line; two sizes of
    one arm, k and epochs are one line; every legend entry names arm, data and epochs."""
    from mobile_vmoe.profile.report import flops_figure, load_runs

    dirs = [_run(tmp_path, "e45", epochs=45, macs=5_000_000), _run(tmp_path, "e6", epochs=6, macs=5_100_000),
            _run(tmp_path, "e1", epochs=1, macs=5_200_000), _run(tmp_path, "k2", epochs=45, top_k=2, macs=9_000_000),
            _run(tmp_path, "big", epochs=45, model="vmoe-6x96-p8-e5", macs=11_000_000)]
    fig = flops_figure(load_runs(dirs))
    ax = fig.axes[0]
    joined = [ln for ln in ax.get_lines() if ln.get_linestyle() not in ("None", "none") and len(ln.get_xdata()) > 1]
    assert [list(ln.get_xdata()) for ln in joined] == [[5.0, 11.0]]  # the 45-epoch k=1 curve, two sizes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted([
        "per-image MoE (end-to-end router), k=1 · digits · 45 ep", "per-image MoE (end-to-end router), k=1 · digits · 6 ep",
        "per-image MoE (end-to-end router), k=1 · digits · 1 ep", "per-image MoE (end-to-end router), k=2 · digits · 45 ep"])
    assert "no error bars" in fig._suptitle.get_text() and "std over seeds" not in fig._suptitle.get_text()


def test_plot_dense_markers_per_dataset_and_error_bars_with_seeds(tmp_path):
    from mobile_vmoe.profile.report import flops_figure, load_runs

    dense = dict(routing="none", num_experts=0, top_k=0, router_superclass_top1=None)
    dirs = [_run(tmp_path, "d1", dataset="digits", **dense), _run(tmp_path, "d2", dataset="shapes", **dense),
            _run(tmp_path, "s0", seed=0, top1=90.0), _run(tmp_path, "s1", seed=1, top1=92.0)]
    fig = flops_figure(load_runs(dirs))
    ax = fig.axes[0]
    markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}  # errorbar containers
    assert len({markers["dense · digits · 8 ep"], markers["dense · shapes · 8 ep"]}) == 2
    assert "std over seeds" in fig._suptitle.get_text()
    assert len(ax.collections) == 1  # one error bar collection: the two-seed point only


def test_published_labels_are_whole_and_inside_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    from mobile_vmoe.profile.report import flops_figure, load_runs, published_rows

    fig = flops_figure(load_runs([_run(tmp_path, "r")]) + published_rows())
    ax = fig.axes[1]
    texts = {t.get_text(): t for t in ax.texts}
    assert "Mobile V-MoE 12x192 p32 (E=10, k=1)" in texts and "DeiT-Tiny" in texts
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    for t in texts.values():  # every label inside its panel: nothing cut at the axes or figure edge
        b = t.get_window_extent(renderer)
        assert box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0 and b.y1 <= box.y1 + 1, t.get_text()
    plt.close(fig)


def test_routing_panels_have_distinct_titles(tmp_path):
    from mobile_vmoe.profile.report import load_runs, routing_titles

    rows = load_runs([_run(tmp_path, "a", expert_usage=run_summary()["expert_usage"]),
                      _run(tmp_path, "b", expert_usage=run_summary()["expert_usage"])])
    titles = routing_titles(rows)
    assert len(set(titles)) == 2 and "/a)" in titles[0] and "/b)" in titles[1]


def test_two_latency_files_for_one_cell_are_a_conflict(tmp_path):
    d = _run(tmp_path, "r")
    lat = {"artifact": "vmoe-6x64-p8-e5_onnx_fp32.onnx", "device": "local", "runtime": "onnxruntime", "runs": 5,
           "min_ms": 1.0, "median_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(lat))
    b.write_text(json.dumps({**lat, "median_ms": 2.0}))
    with pytest.raises(MvmoeError, match=r"a\.json and .*b\.json both measure onnx fp32 @ local \(ms\)"):
        make_report([d], [a, b], tmp_path / "o", published=False)


def test_latency_and_memory_land_in_their_own_typed_fields(tmp_path):
    """A latency file fills Row.latency (ms), a memory file Row.memory (MiB); the kind is read once
    from the file (median_ms or rss_mib), never guessed from the column's text afterwards."""
    from mobile_vmoe.profile.report import LATENCY, MEMORY, attach_latency, load_latency, load_runs

    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(run_summary(expert_usage=None)))
    files = []
    for name, extra in (("lat", {"median_ms": 1.5}), ("mem", {"rss_mib": 17.25, "loader": "mmap"})):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"artifact": "vmoe-6x64-p8-e5_tflite_int8.tflite", "device": "local", **extra}))
        files.append(f)
    rows = load_runs([d])
    cols = attach_latency(rows, load_latency(files))
    assert [(c.kind, c.label) for c in cols] == [(LATENCY, "tflite int8 @ local (ms)"),
                                                  (MEMORY, "tflite int8 mmap @ local (MiB)")]
    assert rows[0].latency == {cols[0]: 1.5} and rows[0].memory == {cols[1]: 17.25}
    assert [rows[0].measured(c) for c in cols] == [1.5, 17.25]
    assert [c.head(csv=True) for c in cols] == ["latency_ms tflite int8 @ local (ms)",
                                                "memory_mib tflite int8 mmap @ local (MiB)"]
