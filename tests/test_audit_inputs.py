"""The audit's cache of decoded inputs under threads: the candidates of one sample, audited side
by side, decode the input once; an unreadable input is reported to every one of them."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipelines.samples.audit import context


@pytest.fixture
def slow_decodes(monkeypatch):
    """Count the decodes, each slow enough that the threads meet while it runs."""
    calls: list[str] = []
    lock = threading.Lock()
    real = context._load_grey

    def load(path, max_pixels):
        with lock:
            calls.append(path.name)
        time.sleep(0.2)
        return real(path, max_pixels)

    monkeypatch.setattr(context, "_load_grey", load)
    return calls


def _in_threads(path, n=4):
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(context._cached_input, path, 10**8) for _ in range(n)]
    return [f.exception() or f.result() for f in futures]


def test_one_decode_for_threads_auditing_the_same_input(tmp_path, slow_decodes):
    path = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128), np.uint8)).save(path)
    got = _in_threads(path)
    assert slow_decodes == ["input.png"]
    assert all(g is got[0] for g in got) and got[0].grey.shape == (96, 128)
    assert context._cached_input(path, 10**8) is got[0] and slow_decodes == ["input.png"]


def test_an_unreadable_input_is_reported_to_every_waiting_thread(tmp_path, slow_decodes):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    got = _in_threads(path)
    assert all(isinstance(g, context.Unreadable) and "broken.jpg" in str(g) for g in got), got
    assert slow_decodes == ["broken.jpg"]
    assert context._LOADING == {}
