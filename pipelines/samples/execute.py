"""Execution: run every code block of every trajectory in the sandbox and attach the results.

One sandbox session per trajectory (later blocks see earlier variables), all workers busy.
Produced images go into the content-addressed store; results carry their store paths. An
execution cache keyed by (the session's code so far, the input image hashes, the sandbox's
semantics version) makes re-runs and repeated snippets free.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from pipelines.core.atomic import remove_stale_temporaries, write_json
from pipelines.core.images import ImageRejected, ImageStore, store_path
from pipelines.core.schema import Sample
from pipelines.core.trajectory import Result, Trajectory
from sandbox import Sandbox

# Bump when what the sandbox returns for the same code and inputs changes (repairs, limits).
SANDBOX_SEMANTICS = "sandbox/2"  # 2: the original's pre-bound names, crop and format rules


class ExecutionCache:
    """Results per (code prefix, inputs): one small JSON file each, written atomically (the
    temporaries in one small folder, cleared of a killed run's when the cache is opened: a cache
    folder holds too many entries to look through per write)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.tmp_dir = self.root / ".partial"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.tmp_dir)
        self.hits = self.misses = 0

    @staticmethod
    def key(codes: list[str], input_hashes: list[str], timeout: float,
            namespace: str = "compat") -> str:
        payload = json.dumps([SANDBOX_SEMANTICS, namespace, timeout, input_hashes, codes])
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> Result | None:
        path = self.root / key[:2] / f"{key}.json"
        if not path.exists():
            self.misses += 1
            return None
        self.hits += 1
        return Result(**json.loads(path.read_text()))

    def put(self, key: str, result: Result) -> None:
        write_json(self.root / key[:2] / f"{key}.json", asdict(result), indent=None,
                   tmp_dir=self.tmp_dir)


def execute(trajectories: list[Trajectory], samples: dict[str, Sample], store: ImageStore,
            sandbox: Sandbox, cache: ExecutionCache | None = None, timeout: float = 10.0,
            progress=None) -> list[Trajectory]:
    """Attach a `Result` to every code turn (in place) and return the trajectories."""

    def run_one(trajectory: Trajectory) -> Trajectory:
        sample = samples[trajectory.sample_id]
        _execute_one(trajectory, sample, store, sandbox, cache, timeout)
        if progress is not None:
            progress.update(1)
        return trajectory

    with ThreadPoolExecutor(sandbox.workers) as pool:
        return list(pool.map(run_one, trajectories))


def _execute_one(trajectory: Trajectory, sample: Sample, store: ImageStore, sandbox: Sandbox,
                 cache: ExecutionCache | None, timeout: float) -> None:
    turns = trajectory.code_turns
    if not turns:
        return
    input_hashes = [im.hash for im in sample.images[:1]]
    keys = [ExecutionCache.key([t.code for t in turns[: k + 1]], input_hashes, timeout,
                               sandbox.namespace) for k in range(len(turns))]
    if cache is not None:
        cached = [cache.get(k) for k in keys]
        if all(r is not None and all(store_path(store.root, p).exists() for p in r.images) for r in cached):
            for turn, result in zip(turns, cached, strict=True):
                turn.result = result
            return
    inputs = [str(store.path(sample.images[0]))] if sample.images else []
    with sandbox.session(inputs=inputs, timeout=timeout) as session:
        for turn, key in zip(turns, keys, strict=True):
            turn.result = stored_result(session.run(turn.code), store)
            if cache is not None:
                cache.put(key, turn.result)


def stored_result(r, store: ImageStore) -> Result:
    """A sandbox result as stored: images moved into the store by content hash."""
    if not r.ok:
        return Result(kind="error", text=r.error.message, error_kind=r.error.kind)
    if r.images:
        refs = []
        for path in r.images:
            try:
                refs.append(store.put_file(path)[0].relpath)
            except ImageRejected as exc:
                return Result(kind="error", text=f"produced image rejected: {exc.detail}",
                              error_kind="invalid_image")
        return Result(kind="image", text=r.text or "", images=refs)
    return Result(kind="text", text=r.text or "")
