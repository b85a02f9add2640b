"""What a stage reports while it trains: metrics.jsonl rows and a progress bar on rank 0."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from ..errors import MvmoeError
from ..fileio import atomic_write_text, to_json


class MetricsLog:
    """Appends one JSON object per line to ``path`` (rank 0 only; a no-op when disabled).

    Rows carry ``kind`` ("step" | "epoch" | "eval"), ``epoch`` and ``step``; see docs/formats.md.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(to_json(record, nonfinite="null") + "\n")
            except OSError as e:  # a full disk, a folder made read-only under the run
                raise MvmoeError(f"cannot write {self.path}: {e.strerror or e}") from None

    def trim(self, step: int) -> None:
        """Drop rows past ``step``: what a killed run logged after the last.pt a resume starts from,
        so the resumed run leaves one row per step."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))


class Progress:
    """A rich progress bar (loss, images/s, ETA); silent when disabled."""

    def __init__(self, total: int, done: int, stage: str, enabled: bool):
        self.enabled = enabled
        self._bar = None
        if not enabled:
            return
        self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]:.0f} img/s"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        # "-" until the loop reads a loss (at log_every steps): a stage shorter than that shows no loss, not nan
        self._task = self._bar.add_task(stage, total=total, completed=done, loss="-", ips=0.0)

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def update(self, step: int, loss: float | None, ips: float) -> None:
        """loss None keeps the last one shown (the loop reads the loss at log steps only)."""
        if self._bar is not None:
            fields = {"ips": ips} if loss is None else {"ips": ips, "loss": f"{loss:.3f}"}
            self._bar.update(self._task, completed=step, **fields)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
