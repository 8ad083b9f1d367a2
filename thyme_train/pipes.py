"""Dagster Pipes for a training process that an asset launched (assets/training.py): opened on
rank 0 only, since every rank of torchrun/deepspeed inherits the Pipes environment (STACK.md).
Outside Dagster nothing here does anything.

A failed run also writes its error to $THYME_TRAIN_ERROR_FILE (when set), so that the launching
asset fails with the trainer's own error instead of a bare exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback

ERROR_FILE_ENV = "THYME_TRAIN_ERROR_FILE"


def open_pipes():
    """Dagster Pipes when an asset launched this process, on rank 0 only (every rank inherits
    the Pipes environment, STACK.md); None otherwise."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if not any(k.startswith("DAGSTER_PIPES_") for k in os.environ):
        return None                       # not launched by Dagster (dagster-pipes may be absent)
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return None
    return open_dagster_pipes()


def log_callback(pipes):
    """A transformers `TrainerCallback` that streams the trainer's logs through `pipes`."""
    from transformers import TrainerCallback

    class StreamLogs(TrainerCallback):
        """Every logged step (loss, learning rate, ...) into the Dagster run's event log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pipes.log.info(f"step {state.global_step}/{state.max_steps}: "
                           f"{json.dumps(logs, default=str)}")

    return StreamLogs()


def write_error(exc: BaseException) -> None:
    """Record `exc` (with its traceback) where the launcher looks, if it asked."""
    target = os.environ.get(ERROR_FILE_ENV)
    if not target:
        return
    from pipelines.core.atomic import write_json

    write_json(target, {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-6000:]}, indent=None)


@contextlib.contextmanager
def launched_process():
    """The body of a launched process's `main`: yields Pipes (None outside Dagster, or on ranks
    other than 0), closes it on the way out (reporting any exception to Dagster), and writes any
    exception where the launcher looks before re-raising it."""
    with contextlib.ExitStack() as stack:
        pipes = open_pipes()
        if pipes is not None:
            stack.enter_context(pipes)
        try:
            yield pipes
        except Exception as exc:
            write_error(exc)
            raise
