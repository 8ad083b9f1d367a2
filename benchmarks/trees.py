"""What the side-by-side benchmarks share: an earlier commit checked out beside this checkout
(each tree then runs in a process of its own on the same inputs), and a process's own peak
memory.

    with baseline_tree("5e697b7", tmp) as base: ...     # a detached `git worktree`, removed after
    peak_rss_mb()                                        # VmHWM of this process
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def baseline_tree(commit: str, folder: str | Path) -> Iterator[Path]:
    """`commit` checked out in `folder`/baseline for the block (a detached worktree of this
    repository; removed after, whatever happens)."""
    tree = Path(folder) / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not `ru_maxrss`: a child started with
    subprocess keeps, in `ru_maxrss`, its parent's size at the fork (e.g. a data writer's)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
