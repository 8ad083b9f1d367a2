"""A full disk during writes (issue 20): a clear error naming the target, no partial file, the
old version untouched, and a re-run after space is freed gives what an undisturbed run gives.

The disk is a real tmpfs of a few MB mounted for the test (root is needed to mount; elsewhere
these tests are skipped with that reason)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import thyme_corpus
from faults import partial_files
from PIL import Image

from pipelines.core.atomic import WriteFailed, write_json
from pipelines.core.formats import SourceRow, thyme_rl_table
from pipelines.core.formats import write_parquet as write_source

REPO = str(Path(__file__).resolve().parent.parent)


class Disk:
    """A mounted tmpfs: `fill` leaves only a few bytes free, `free` removes the filler."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / "filler.bin"

    def resize(self, mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(self.root)], check=True)

    def fill(self, leave: int = 0) -> None:
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        with open(self.filler, "ab") as f:
            f.write(b"\0" * max(free - leave, 0))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()   # ~30 KB: noise does not compress


def ingest_cli(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", "ingest", "--format", "thyme-rl", "--input",
                           str(src), "--out", str(out), "--shard-size", "20", "--workers", "2", "--quiet"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})


def pool_contents(out: Path) -> tuple[list[dict], list[str]]:
    rows = [r for f in sorted((out / "samples").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    images = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    return rows, images


def test_ingest_onto_a_full_disk_stops_clearly_and_resumes(tmp_path, disk):
    rows = [SourceRow(f"Question {i}?", [png(i)], answer=str(i), image_path=f"/d/{i}.png",
                      image_size=(100, 100)) for i in range(100)]    # ~3 MB of images, on 2 MB
    src = tmp_path / "rl.parquet"
    write_source(thyme_rl_table(rows), src, row_group_size=10)
    reference = tmp_path / "reference"
    assert ingest_cli(src, reference).returncode == 0

    out = disk.root / "pool"
    proc = ingest_cli(src, out)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: [Errno 28] No space left on device") and str(out) in error, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not partial_files(disk.root)
    done = sorted(p.name for p in (out / "samples").glob("*.parquet")) if (out / "samples").exists() else []
    assert len(done) < 5   # it did stop

    disk.resize(64)
    proc = ingest_cli(src, out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped_shards"] == len(done)   # finished shards were kept
    assert pool_contents(out) == pool_contents(reference)
    assert not partial_files(disk.root)


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return thyme_corpus.corpus(tmp_path_factory)


def test_every_writer_on_a_full_disk_keeps_the_old_version(corpus, disk):
    """Shard tables, the funnel chart, the report, the splits folder and a published dataset:
    written once, then again on a full disk (error names the target; the old version stays
    whole), then again after space is freed."""
    from pipelines.datasets.publish import PublishConfig, publish
    from pipelines.datasets.splits import SplitConfig, build_splits
    from pipelines.samples.shards import (
        audit_funnel,
        funnel_chart,
        read_trajectories,
        write_trajectories,
    )

    root, _ = corpus
    disk.resize(24)
    audited, samples = thyme_corpus.files(root)
    trajectories = read_trajectories(Path(audited[0]))
    out = disk.root
    writers = {
        "audited/shard-00000.parquet": lambda p: write_trajectories(trajectories, p),
        "reports/funnel-shard-00000.png": lambda p: funnel_chart(audit_funnel(trajectories), p),
        "pool/report.json": lambda p: write_json(p, {"rows": list(range(20_000))}),
        "splits": lambda p: build_splits(audited, samples, p, SplitConfig(test_share=0.25)),
        "published/thyme-rl": lambda p: publish(out / "splits", root / "pool" / "images", p,
                                                PublishConfig(kind="rl")),
    }
    before = {}
    for name, write in writers.items():
        write(out / name)
        before[name] = snapshot(out / name)
        assert before[name], name
    disk.fill(leave=4096)
    for name, write in writers.items():
        with pytest.raises(WriteFailed) as err:
            write(out / name)
        assert err.value.errno == 28 and err.value.filename == str(out / name), name
        assert snapshot(out / name) == before[name], f"{name} changed by the failed write"
        with pytest.raises(WriteFailed):   # and a target that was not there stays absent
            write(out / "new" / name)
        assert not (out / "new" / name).exists(), name
        assert not partial_files(out), name
    disk.free()
    for name, write in writers.items():
        write(out / name)
    assert not partial_files(out)
    assert pq.read_table(out / "audited" / "shard-00000.parquet").num_rows == len(trajectories)

