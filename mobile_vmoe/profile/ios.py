"""Core ML latency: what coremltools can run, and where it cannot.

- On macOS, `profile latency` opens the .mlpackage with converters.coreml.load_runner
  (`coremltools.models.MLModel(path, compute_units=ComputeUnit.ALL)`, the record's
  latency_options; elsewhere profile.latency.check_runs_here refuses it) and times
  `MLModel.predict({input: array})` on the Mac itself (Core ML on the Mac's CPU/GPU/Neural Engine;
  it says nothing about a phone). Not run here: this machine is Linux, where coremltools can
  convert but cannot predict.
- An iPhone (`--device ios[:UDID]`) cannot be driven from coremltools: it has no device runner.
  Apple's tool for on-device numbers is Xcode's Core ML performance report (Xcode > Open Developer
  Tool > Core ML model > Performance, on a connected device). Our route is the iOS demo app's
  benchmark screen, which writes the app benchmark JSON (docs/formats.md); `mvmoe profile ingest
  FILE.json` turns it into the same keys as `profile latency`. So `profile_ios` raises a clear
  MvmoeError saying so.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MvmoeError
from .timing import LatencyResult

IOS_HOWTO = ("run the iOS demo app's Benchmark screen (apps/ios_demo) on the phone, share its JSON, then "
             "`mvmoe profile ingest FILE.json`; or use Xcode's Core ML performance report")


def profile_ios(path: Path, udid: str | None, warmup: int, runs: int) -> LatencyResult:
    """On-device iPhone latency is not reachable from Python: say what to do instead."""
    target = f"iPhone {udid}" if udid else "an iPhone"
    raise MvmoeError(f"measuring {path.name} on {target} needs Xcode (no coremltools device runner exists); {IOS_HOWTO}")
