"""Helpers shared by the hostile suites (`test_sandbox_hostile*.py`)."""

from __future__ import annotations

import os
import textwrap

import pytest

from sandbox import result as R

UNPRIVILEGED_UID = 65534


def snippet(src: str, **values) -> str:
    """Dedented code with each `@NAME@` replaced by the repr of `values[NAME]`."""
    src = textwrap.dedent(src).strip("\n")
    for key, value in values.items():
        src = src.replace(f"@{key}@", repr(value))
    return src


def worker_pids(sb) -> list[int]:
    return [h.pid for h in sb._handles]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (scans /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                data = f.read()
        except OSError:
            continue
        parents[int(entry)] = int(data.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def assert_healthy(sb, pids: list[int] | None = None) -> None:
    """The sandbox still answers on every worker, no worker was replaced (when `pids` is
    given), and no process the code started is still running."""
    for _ in range(sb.workers):
        r = sb.run("print(1)")
        assert r.ok and r.stdout == "1\n", r
    if pids is not None:
        assert worker_pids(sb) == pids, "a worker died and was replaced"
    for h in sb._handles:
        # below a worker: its zygotes, and at most one idle image checker
        others = descendants(h.pid) - set(h.info["zygote_pids"].values())
        assert len(others) <= 1 and all(process_name(p) == "thyme-checker" for p in others), \
            f"processes left behind under worker {h.pid}: {[(p, process_name(p)) for p in others]}"


def results_listing(sb) -> set[str]:
    return set(os.listdir(sb.results_dir))


def assert_denied(r, kind: str = R.FORBIDDEN, *, secrets: tuple[str, ...] = ()) -> None:
    assert not r.ok, r
    assert r.error.kind == kind, r.error
    for secret in secrets:
        assert secret not in r.stdout and secret not in r.error.message


@pytest.fixture(autouse=True)
def still_serving(request):
    """After every hostile test: each worker of the sandbox it used answers `print(1)` (the
    count in docs/sandbox.md relies on it). Imported by each hostile module to take effect."""
    # requested now, so they are torn down after this fixture
    used = [request.getfixturevalue(name) for name in ("any_sandbox", "sandbox")
            if name in request.fixturenames]
    yield
    for sb in used:
        for _ in range(sb.workers):
            r = sb.run("print(1)")
            assert r.ok and r.stdout == "1\n", f"the sandbox stopped serving: {r}"
