"""What the provider benches share: a fake provider served from a child process, so the bench
process measures only its own side."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def fake_in_child(script: str, *args: str) -> Iterator[list[str]]:
    """Run `script` (it starts a fake and prints one line of what the bench needs, then waits
    on stdin) in a child process; yields that line's words, and ends the child after."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().split()
    finally:
        child.kill()
        child.wait()
