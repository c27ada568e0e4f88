"""Freed host memory is kept for reuse (glibc's mallopt thresholds)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_host_memory_is_kept_for_reuse_on_glibc() -> None:
    """mallopt accepts both thresholds; in a fresh process, a freed 64 MiB tensor leaves the resident size up."""
    code = (
        "import os, torch\n"
        "from continual.runtime.host_memory import retain_freed_memory\n"
        "assert retain_freed_memory()\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "before = rss(); x = torch.ones(16 * 2**20); del x\n"
        "print(rss() - before)\n"
    )
    kept = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              cwd=REPO_ROOT).stdout)
    assert kept >= 60 * 2**20  # glibc's default would have unmapped it on free
