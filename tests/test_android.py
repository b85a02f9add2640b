"""Android profiling against a fake adb server on 127.0.0.1 that speaks the adb host protocol.

The fake implements exactly what adbutils 2.x sends: host:version, host:devices(-l),
host:tport:serial:S (server version >= 41, answered with OKAY + an 8-byte transport id),
shell:CMD (v1: output then close; adbutils appends `; echo X4EXIT:$?`), and sync: with STAT and
SEND (DATA chunks, DONE + mtime, answered OKAY). Its file system is a dict; its shell knows the few
commands the profiler runs (getprop, mkdir -p, chmod, rm -rf, and the pushed benchmark binary,
whose output and exit code the test sets).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import pytest

from mobile_vmoe.errors import MvmoeError
from mobile_vmoe.profile.android import parse_benchmark_model, parse_executor_runner, profile_android

BENCHMARK_MODEL_OUT = """\
INFO: STARTING!
INFO: Graph: [/data/local/tmp/mvmoe-1/m.tflite]
INFO: Num threads: [2]
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=18535 curr=14300 min=14100 max=18535 avg=14462.3 std=900
INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=14730 curr=14382 min=14206 max=15283 avg=14575.2 std=232 p5=14231 median=14512 p95=15001
INFO: Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14575.2
INFO: Memory footprint delta from the start of the tool (MB): init=8.54297 overall=10.5469
INFO: Overall peak memory footprint (MB) via periodic monitoring: 13.3281
"""


class FakeAdb:
    """State of the fake server: devices, files, what ran, what the binary prints."""

    def __init__(self, devices=(("emulator-5554", "device", "model:Pixel_8"),)):
        self.devices = list(devices)
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = {"/data/local/tmp"}
        self.commands: list[str] = []
        self.binary_outputs: list[tuple[str, int]] = []  # consumed in order, last one repeats
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ shell
    def shell(self, cmd: str) -> tuple[str, int]:
        with self.lock:
            self.commands.append(cmd)
            argv = cmd.split()
            if argv[:1] == ["getprop"]:
                return {"ro.product.model": "Pixel 8", "ro.build.version.release": "15"}.get(argv[1], "") + "\n", 0
            if argv[:2] == ["mkdir", "-p"]:
                self.dirs.add(argv[2])
                return "", 0
            if argv[:1] == ["chmod"]:
                return ("", 0) if argv[2] in self.files else (f"chmod: {argv[2]}: No such file\n", 1)
            if argv[:2] == ["rm", "-rf"]:
                root = argv[2]
                self.dirs.discard(root)
                for p in [p for p in self.files if p.startswith(root + "/")]:
                    del self.files[p]
                return "", 0
            if argv and argv[0] in self.files:
                out, rc = self.binary_outputs[0] if len(self.binary_outputs) == 1 else self.binary_outputs.pop(0)
                return out, rc
            return f"/system/bin/sh: {argv[0] if argv else ''}: not found\n", 127


def _serve(fake: FakeAdb):
    class Handler(socketserver.BaseRequestHandler):
        def recv_exact(self, n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = self.request.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf

        def reply(self, payload: str) -> None:
            data = payload.encode()
            self.request.sendall(b"OKAY" + f"{len(data):04x}".encode() + data)

        def fail(self, msg: str) -> None:
            data = msg.encode()
            self.request.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)

        def handle(self):
            try:
                serial = None
                while True:
                    cmd = self.recv_exact(int(self.recv_exact(4), 16)).decode()
                    if cmd == "host:version":
                        return self.reply("0029")  # 41
                    if cmd in ("host:devices", "host:devices-l"):
                        lines = [f"{s}\t{st}" + (f" {tags}" if cmd.endswith("-l") else "") for s, st, tags in fake.devices]
                        return self.reply("".join(line + "\n" for line in lines))
                    if cmd.startswith("host:tport:serial:"):
                        serial = cmd.rsplit(":", 1)[1]
                        state = {s: st for s, st, _ in fake.devices}.get(serial)
                        if state != "device":
                            return self.fail(f"device '{serial}' not found" if state is None else f"device {state}")
                        self.request.sendall(b"OKAY" + struct.pack("<q", 1))
                        continue
                    if serial is None:
                        return self.fail(f"unknown host service {cmd}")
                    if cmd.startswith("shell:"):
                        body = cmd[len("shell:"):]
                        marker = "; echo X4EXIT:$?"
                        inner = body[:-len(marker)] if body.endswith(marker) else body
                        out, rc = fake.shell(inner)
                        tail = f"X4EXIT:{rc}\n" if body.endswith(marker) else ""
                        self.request.sendall(b"OKAY" + (out + tail).encode())
                        return
                    if cmd == "sync:":
                        self.request.sendall(b"OKAY")
                        return self.sync()
                    return self.fail(f"unsupported {cmd}")
            except EOFError:
                return

        def sync(self):
            while True:
                sid = self.recv_exact(4)
                (n,) = struct.unpack("<I", self.recv_exact(4))
                arg = self.recv_exact(n).decode()
                if sid == b"STAT":
                    if arg in fake.dirs:
                        self.request.sendall(b"STAT" + struct.pack("<III", 0o040755, 4096, 1700000000))
                    elif arg in fake.files:
                        self.request.sendall(b"STAT" + struct.pack("<III", 0o100644, len(fake.files[arg]), 1700000000))
                    else:
                        self.request.sendall(b"STAT" + struct.pack("<III", 0, 0, 0))
                elif sid == b"SEND":
                    path = arg.rsplit(",", 1)[0]
                    data = b""
                    while True:
                        kind = self.recv_exact(4)
                        (m,) = struct.unpack("<I", self.recv_exact(4))
                        if kind == b"DONE":
                            break
                        data += self.recv_exact(m)
                    if path.rsplit("/", 1)[0] not in fake.dirs:
                        msg = b"secure_mkdirs failed: No such file or directory"
                        self.request.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
                        return
                    fake.files[path] = data
                    self.request.sendall(b"OKAY" + struct.pack("<I", 0))
                elif sid == b"QUIT":
                    return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()  # quick shutdown
    return server


@pytest.fixture
def adb():
    fake = FakeAdb()
    server = _serve(fake)
    fake.port = server.server_address[1]
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "vmoe_tflite_fp32.tflite"
    model.write_bytes(b"TFL3" + bytes(range(256)) * 40)  # 10 KB: several 4 KB DATA chunks
    pte = tmp_path / "vmoe_executorch-xnnpack_fp32.pte"
    pte.write_bytes(b"ET12" + b"\x01" * 5000)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake")
    runner = tmp_path / "executor_runner"
    runner.write_bytes(b"\x7fELF fake runner")
    return model, pte, binary, runner


# ---------------------------------------------------------------------------------- parsers

def test_parse_benchmark_model_uses_last_stat_line_in_ms():
    d = parse_benchmark_model(BENCHMARK_MODEL_OUT)
    assert d["runs"] == 50  # the timed block, not the 20 warmup runs
    assert d["min_ms"] == pytest.approx(14.206)
    assert d["mean_ms"] == pytest.approx(14.5752)
    assert d["median_ms"] == pytest.approx(14.512)
    assert d["p95_ms"] == pytest.approx(15.001)
    assert d["p90_ms"] is None  # benchmark_model does not print it; we do not invent one
    assert d["init_ms"] == pytest.approx(5.685) and d["first_inference_ms"] == pytest.approx(18.535)
    assert d["peak_memory_mb"] == pytest.approx(13.3281)


def test_parse_benchmark_model_without_median():
    d = parse_benchmark_model("INFO: count=3 first=100 curr=90 min=80 max=100 avg=90 std=8\n")
    assert (d["runs"], d["min_ms"], d["mean_ms"], d["median_ms"]) == (3, 0.08, 0.09, None)


def test_parsers_reject_output_without_timings():
    with pytest.raises(MvmoeError, match="no timing line"):
        parse_benchmark_model("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")
    with pytest.raises(MvmoeError, match="Model executed successfully"):
        parse_executor_runner("E executor_runner.cpp:123] Loading of program failed with error 0x22\n")
    assert parse_executor_runner("I 00:00:00.4 executorch:executor_runner.cpp:300] "
                                 "Model executed successfully 10 time(s) in 123.5 ms.") == (10, 123.5)


# -------------------------------------------------------------------------------- adb flows

def test_tflite_push_run_parse_cleanup(adb, files):
    model, _, binary, _ = files
    adb.binary_outputs = [(BENCHMARK_MODEL_OUT, 0)]
    res = profile_android(model, binary, "emulator-5554", warmup=5, runs=50, threads=2, port=adb.port).to_dict()
    assert res["device"] == "Pixel 8 (Android 15)"
    assert res["runtime"] == "litert benchmark_model" and res["serial"] == "emulator-5554"
    assert (res["runs"], res["min_ms"], res["median_ms"], res["mean_ms"]) == (50, 14.206, 14.512, 14.5752)
    run = [c for c in adb.commands if "benchmark_model --graph" in c]
    assert len(run) == 1
    assert "--graph=/data/local/tmp/mvmoe-" in run[0] and run[0].endswith("--num_threads=2")
    assert "--warmup_runs=5 --num_runs=50" in run[0]
    # the pushed bytes arrived whole (the fake keeps them until rm -rf), then everything was removed
    assert any(c.startswith("chmod 755 /data/local/tmp/mvmoe-") for c in adb.commands)
    assert adb.commands[-1].startswith("rm -rf /data/local/tmp/mvmoe-")
    assert adb.files == {} and adb.dirs == {"/data/local/tmp"}


def test_push_delivers_exact_bytes(adb, files):
    model, _, binary, _ = files
    seen = {}
    orig = adb.shell

    def spy(cmd):  # snapshot the device's files when the benchmark runs
        if "--graph=" in cmd:
            seen.update(adb.files)
        return orig(cmd)

    adb.shell = spy
    adb.binary_outputs = [(BENCHMARK_MODEL_OUT, 0)]
    profile_android(model, binary, None, warmup=1, runs=3, port=adb.port)  # the only device, no serial
    by_name = {p.rsplit("/", 1)[1]: b for p, b in seen.items()}
    assert by_name == {model.name: model.read_bytes(), binary.name: binary.read_bytes()}


def test_executor_runner_samples(adb, files):
    _, pte, _, runner = files
    line = "I 00:00:01.000 executorch:executor_runner.cpp:301] Model executed successfully {} time(s) in {} ms.\n"
    # warmup process, then 3 samples of 4 executions each: 40, 20, 24 ms total -> 10, 5, 6 ms per run
    adb.binary_outputs = [(line.format(2, 99.0), 0), (line.format(4, 40.0), 0),
                          (line.format(4, 20.0), 0), (line.format(4, 24.0), 0)]
    res = profile_android(pte, runner, "emulator-5554", warmup=2, runs=12, port=adb.port,
                          executions_per_sample=4).to_dict()
    assert res["runtime"] == "executorch executor_runner"
    assert res["runs_ms"] == [10.0, 5.0, 6.0]
    assert (res["runs"], res["min_ms"], res["median_ms"], res["mean_ms"]) == (3, 5.0, 6.0, 7.0)
    assert res["p90_ms"] == pytest.approx(9.2)  # 6 + 0.8 * (10 - 6)
    runs = [c for c in adb.commands if "--model_path=" in c]
    assert runs[0].endswith("--num_executions=2") and all(c.endswith("--num_executions=4") for c in runs[1:])
    assert adb.files == {}


# ----------------------------------------------------------------------------------- errors

def test_no_adb_server(files):
    model, _, binary, _ = files
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MvmoeError, match="no adb server at 127.0.0.1"):
        profile_android(model, binary, None, port=port)


@pytest.mark.parametrize("devices, serial, message", [
    ([], None, "no Android device connected"),
    ([("A1", "unauthorized", "")], None, "A1 is unauthorized: accept the USB debugging prompt"),
    ([("A1", "offline", "")], "A1", "A1 is offline"),
    ([("A1", "device", ""), ("B2", "device", "")], None, r"2 Android devices connected \(A1, B2\)"),
    ([("A1", "device", "")], "Z9", "no Android device with serial 'Z9'; connected: A1"),
])
def test_device_errors(adb, files, devices, serial, message):
    model, _, binary, _ = files
    adb.devices = devices
    with pytest.raises(MvmoeError, match=message):
        profile_android(model, binary, serial, port=adb.port)


def test_missing_binary(adb, files, tmp_path):
    model = files[0]
    with pytest.raises(MvmoeError, match="needs --binary PATH: the benchmark_model binary"):
        profile_android(model, None, port=adb.port)
    with pytest.raises(MvmoeError, match="benchmark binary not found"):
        profile_android(model, tmp_path / "nope", port=adb.port)
    assert adb.commands == []  # nothing reached the device


def test_failed_run_still_cleans_up(adb, files):
    model, _, binary, _ = files
    adb.binary_outputs = [("ERROR: Failed to allocate tensors!\n", 1)]
    with pytest.raises(MvmoeError, match=r"benchmark_model failed on the device \(exit 1\).*allocate tensors"):
        profile_android(model, binary, "emulator-5554", port=adb.port)
    assert adb.commands[-1].startswith("rm -rf") and adb.files == {}


def test_unparsable_output(adb, files):
    model, _, binary, _ = files
    adb.binary_outputs = [("INFO: STARTING!\n", 0)]
    with pytest.raises(MvmoeError, match="printed no timing line"):
        profile_android(model, binary, "emulator-5554", port=adb.port)
    assert adb.files == {}
