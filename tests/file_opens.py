"""Count how often files are opened, whoever opens them (Python, polars' or Arrow's native readers):
Linux inotify `IN_OPEN` events on the files' folders, read by a background thread so that repeated
opens are not merged in the kernel's queue.

    with FileOpens(folders) as opens:
        ...
    opens.counts  -> Counter {path: times opened}
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import sys
import threading
from collections import Counter
from pathlib import Path

IN_OPEN = 0x20
_EVENT = struct.Struct("iIII")


def available() -> bool:
    return sys.platform.startswith("linux")


class FileOpens:
    def __init__(self, folders):
        self.folders = [str(Path(f)) for f in folders]
        self.counts: Counter = Counter()

    def __enter__(self) -> FileOpens:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._folder_of = {}
        for folder in self.folders:
            wd = libc.inotify_add_watch(self._fd, folder.encode(), IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self._folder_of[wd] = folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            at = 0
            while at < len(buf):
                wd, _mask, _cookie, size = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size:at + _EVENT.size + size].rstrip(b"\0").decode()
                at += _EVENT.size + size
                if name and wd in self._folder_of:
                    self.counts[os.path.join(self._folder_of[wd], name)] += 1

    def _read(self) -> None:
        while not self._stop.is_set():
            if select.select([self._fd], [], [], 0.05)[0]:
                self._drain()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        os.close(self._fd)
