"""Files the tool writes get the usual permissions: 0o666 less the umask (not mkstemp's 0o600)."""

from __future__ import annotations

import os
import stat

import pytest

from mobile_vmoe.fileio import atomic_write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_honours_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left
