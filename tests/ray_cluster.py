"""A real Ray cluster on this machine for tests and benchmarks: a head and worker nodes started
with `ray start` as separate sessions (one CPU each, no dashboard, temp dirs of their own, free
ports), stopped by killing exactly those sessions' processes (`ray stop` would stop every Ray
process on the machine, other people's included).

    with LocalRayCluster(env={"PYTHONPATH": ROOT}) as cluster:
        node = cluster.add_node()                 # the head is started by the constructor
        (or LocalRayCluster(wait=False), add_node(wait=False), other work, then started())
        ... ray.init(address=cluster.address) ...
        cluster.kill(node)                        # a node dies (kill -9 of all its processes)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Notice a dead node within seconds instead of ~30 s.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000",
                          "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """A `ray start`: its pid leads the session its processes run in."""
    pgid: int                 # = its session id (start_new_session)
    temp_dir: str
    log: Path


class LocalRayCluster:
    def __init__(self, env: dict | None = None, head_cpus: int = 1, wait: bool = True):
        self.root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")   # short: socket paths are limited
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **FAST_FAILURE_DETECTION,
                    **(env or {})}
        self.nodes: list[Node] = []
        self._starting: list[tuple[subprocess.Popen, Node]] = []
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        try:
            self.head = self._start(["--head", "--port", str(port), "--node-ip-address",
                                     "127.0.0.1", "--include-dashboard=false",
                                     "--ray-client-server-port", str(free_port())], head_cpus)
            if wait:
                self.started()
        except BaseException:
            self.stop()
            raise

    def add_node(self, cpus: int = 1, wait: bool = True) -> Node:
        """A node joining the head; `wait=False` returns while it starts (`ray start` retries
        until the head answers), so that nodes start side by side: `started()` waits."""
        node = self._start(["--address", self.address, "--node-ip-address", "127.0.0.1"], cpus)
        if wait:
            self.started()
        return node

    def _start(self, args: list[str], cpus: int) -> Node:
        temp_dir = tempfile.mkdtemp(prefix="n", dir=self.root)
        log = Path(temp_dir) / "start.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [RAY, "start", *args, "--num-cpus", str(cpus), "--num-gpus", "0",
                 "--temp-dir", temp_dir, "--disable-usage-stats",
                 "--dashboard-agent-listen-port", str(free_port()),
                 "--metrics-export-port", str(free_port())],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(proc.pid, temp_dir, log)
        self.nodes.append(node)      # before waiting: a failed start is still cleaned up
        self._starting.append((proc, node))
        return node

    def started(self, timeout: float = 180.0) -> None:
        """Wait for every `ray start` launched so far to finish; raises with its log if one
        failed."""
        while self._starting:
            proc, node = self._starting.pop(0)
            if proc.wait(timeout=timeout) != 0:
                raise RuntimeError(f"ray start failed:\n{node.log.read_text()[-3000:]}")

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> None:
        import ray
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(1 for n in ray.nodes() if n["Alive"]) == count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not reach {count} alive nodes")

    def processes(self, node: Node) -> set[int]:
        """The node's running processes: its session (`ray start` exits once the node's daemons
        run; they keep its session, and the workers the raylet starts, in process groups of their
        own, too) and whatever those started outside it (sandbox workers)."""
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[0] != "Z":
                    table[int(entry)] = (int(fields[1]), int(fields[3]))   # ppid, session
        found = {pid for pid, (_, session) in table.items() if session == node.pgid}
        todo = list(found)
        while todo:
            parent = todo.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in found:
                    found.add(pid)
                    todo.append(pid)
        return found

    def kill(self, node: Node) -> None:
        """kill -9 every process of the node (its raylet, object store, workers), as when the
        machine dies."""
        for pid in self.processes(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        self.nodes = []
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
