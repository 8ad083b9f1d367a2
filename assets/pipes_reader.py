"""A Pipes message reader that never parses a half-written line.

Dagster's file reader tails the message file with `readline()`, which returns whatever is there:
a message the training process is still writing comes back cut, `json.loads` fails and the
reader thread dies, so every later message (the materialization included) is lost. Seen on 2
cores while a trainer logged a step. This reader holds a partial line until its newline arrives.
"""

import json
import os
import sys
import tempfile
from contextlib import contextmanager

from dagster import PipesFileMessageReader, PipesTempFileMessageReader
from dagster._utils import tail_file


class WholeLineFileMessageReader(PipesFileMessageReader):
    def _reader_thread(self, handler, is_resource_complete) -> None:
        try:
            pending = ""
            for chunk in tail_file(self._path, is_resource_complete.is_set):
                pending += chunk
                if pending.endswith("\n"):
                    handler.handle_message(json.loads(pending))
                    pending = ""
            if pending.strip():   # the process ended: whatever is left is a whole message
                handler.handle_message(json.loads(pending))
        except:  # noqa: E722 - reported to Dagster as its own reader does, then re-raised
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread",
                                                     sys.exc_info())
            raise


class WholeLineTempFileMessageReader(PipesTempFileMessageReader):
    """`PipesTempFileMessageReader` with `WholeLineFileMessageReader` underneath."""

    @contextmanager
    def read_messages(self, handler):
        with tempfile.TemporaryDirectory() as tempdir, WholeLineFileMessageReader(
                os.path.join(tempdir, "messages"),
                include_stdio_in_messages=self._include_stdio_in_messages).read_messages(handler) as params:
            yield params
