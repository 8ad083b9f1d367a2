"""A Pipes message reader that never parses a half-written line, on Dagster's public reader API.

Dagster's file reader tails the message file with `readline()`, which returns whatever is there:
a message the training process is still writing comes back cut, `json.loads` fails and the
reader thread dies, so every later message (the materialization included) is lost. Seen on 2
cores while a trainer logged a step. This reader holds a partial line until its newline arrives.

It implements the public `PipesMessageReader` interface itself (`read_messages`,
`no_messages_debug_text`), so it overrides no private Dagster method: the external process
writes through Dagster Pipes' default file writer (`PipesDefaultMessageWriter`), to the path this
reader yields.
"""

import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

from dagster import PipesMessageReader
from dagster_pipes import PipesDefaultMessageWriter

POLL_S = 0.01          # how often the file is checked for more bytes


class WholeLineFileMessageReader(PipesMessageReader):
    """Reads the messages the process writes to `path`, one JSON message per whole line."""

    def __init__(self, path: str, include_stdio_in_messages: bool = False, cleanup_file: bool = True):
        self.path = path
        self.include_stdio_in_messages = include_stdio_in_messages
        self.cleanup_file = cleanup_file

    @contextmanager
    def read_messages(self, handler):
        done = threading.Event()
        open(self.path, "w", encoding="utf-8").close()
        thread = threading.Thread(target=self._read, args=(handler, done), daemon=True)
        thread.start()
        try:
            yield {PipesDefaultMessageWriter.FILE_PATH_KEY: self.path,
                   PipesDefaultMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY: self.include_stdio_in_messages}
        finally:
            done.set()
            thread.join()
            if self.cleanup_file and os.path.exists(self.path):
                os.remove(self.path)

    def no_messages_debug_text(self) -> str:
        return f"Attempted to read messages from file {self.path}."

    def _read(self, handler, done: threading.Event) -> None:
        try:
            pending = ""
            with open(self.path, encoding="utf-8") as f:
                while not done.is_set():
                    chunk = f.readline()
                    if not chunk:
                        time.sleep(POLL_S)
                        continue
                    pending += chunk
                    if pending.endswith("\n"):
                        handler.handle_message(json.loads(pending))
                        pending = ""
                pending += f.read()     # the session is over: what was written since, to the end
            for line in pending.split("\n"):   # the last one, with or without its newline, is whole now
                if line.strip():
                    handler.handle_message(json.loads(line))
        except:  # noqa: E722 - reported to Dagster as its own reader does, then re-raised
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread",
                                                     sys.exc_info())
            raise


class WholeLineTempFileMessageReader(PipesMessageReader):
    """`WholeLineFileMessageReader` on a temporary file (as Dagster's `PipesTempFileMessageReader`)."""

    def __init__(self, include_stdio_in_messages: bool = False):
        self.include_stdio_in_messages = include_stdio_in_messages

    @contextmanager
    def read_messages(self, handler):
        with tempfile.TemporaryDirectory() as tempdir, WholeLineFileMessageReader(
                os.path.join(tempdir, "messages"),
                include_stdio_in_messages=self.include_stdio_in_messages).read_messages(handler) as params:
            yield params

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file."
