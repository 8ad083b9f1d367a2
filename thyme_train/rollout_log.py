"""Rollout samples: `rollouts.jsonl` in GRPO's output directory, so that a researcher can read
what the policy does, step by step.

For every step that logs (each `logging_steps`-th), a seeded sample of `samples` rollouts of the
batch is written, one JSON object a line (appended whole, one write per line: a reader never sees
half a record):

    step, index (in the batch), origin (the prompt's data file and row), system, user (the
    prompt text, `<image>` where each image stands), images (the prompt's image files, relative
    to the working directory), solution, completion (the whole completion: the model's writing
    and the sandbox outputs, each image as `<image>`), calls (each code block in order: `code` as
    the model wrote it; the sandbox's `repairs`, and the `executed` code when they changed it;
    `ok`, `output` (the printed text), `error` ("kind: message"), `images` (copies of the images
    it produced, under `rollouts/`, relative to the output directory), `rolled_back`), rewards
    (by reward function; null where one abstained), reward (their weighted sum, as TRL adds
    them), end_reason, error, turns (generation calls).

    log = RolloutLog(out_dir, samples=4, logging_steps=1, weights=[1.0, 0.5, 0.5])
    reward_funcs = log.wrap(reward_funcs)              # they report each batch's rewards
    on_event = log.watch(step)                         # RolloutRunner.run(..., on_event=on_event)
    log.collect(step, prompts, rollouts, codec)        # after the rollouts; written once rewarded

A resumed run keeps the lines of the steps its checkpoint holds and drops later ones (they are
redone); a fresh run starts an empty file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

from sandbox.protocol import IMAGE_TOKEN, extract_code

ROLLOUTS_FILE = "rollouts.jsonl"
IMAGES_DIR = "rollouts"


class RolloutLog:
    """Writes rollouts.jsonl on the main process (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, samples: int, logging_steps: int = 1,
                 weights: list[float] | None = None, seed: int = 0):
        self.out = Path(out_dir)
        self.path = self.out / ROLLOUTS_FILE
        self.samples, self.logging_steps = samples, max(1, logging_steps)
        self.weights, self.seed = weights, seed
        self.names: list[str] = []
        self._events: dict[int, dict] = {}        # id(rollout) -> its generations and calls
        self._pending: list[dict] | None = None   # sampled records awaiting their rewards
        self._rewards: dict[str, list] = {}       # the pending batch's rewards, by function
        self._size = 0                            # the pending batch's rollouts
        self._last_step = 0

    # -- which steps log ---------------------------------------------------------------------

    def restart(self, checkpoint: str | os.PathLike | None) -> None:
        """Keep the lines of the steps `checkpoint` holds (the one resumed from; None: a fresh
        run keeps none)."""
        from pipelines.core.atomic import write_text

        step = self._last_step = checkpoint_step(checkpoint)
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step(line) <= step]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def wants(self, step: int) -> bool:
        return self.samples > 0 and step % self.logging_steps == 0 and step > self._last_step

    # -- during the rollouts -----------------------------------------------------------------

    def watch(self, step: int):
        """The `on_event` callback for RolloutRunner.run at `step` (None when it does not log)."""
        self._events = {}
        if not self.wants(step):
            return None

        def on_event(rollout, kind, payload):
            events = self._events.setdefault(id(rollout), {"generations": [], "calls": []})
            if kind == "generation":
                events["generations"].append(list(payload.token_ids))
            elif kind == "sandbox":
                events["calls"].append({"result": payload, "call": len(events["generations"]) - 1})
            elif kind == "rollback" and events["calls"]:
                events["calls"][-1]["rolled_back"] = True
        return on_event

    def collect(self, step: int, prompts: list, rollouts: list, codec) -> None:
        """Pick the step's sample and build its records (written once the rewards are in)."""
        events, self._events = self._events, {}
        if not self.wants(step) or not rollouts:
            return
        picked = sorted(random.Random(f"{self.seed}-{step}").sample(
            range(len(rollouts)), min(self.samples, len(rollouts))))
        self._pending = [self._record(step, i, prompts[i], rollouts[i],
                                      events.get(id(rollouts[i]), {}), codec) for i in picked]
        self._size, self._rewards = len(rollouts), {}
        self._last_step = step

    def _record(self, step: int, index: int, prompt: list, rollout, events: dict, codec) -> dict:
        system, user, images = _prompt_text(prompt)
        calls = []
        for c in events.get("calls", []):
            r = c["result"]
            generation = events["generations"][c["call"]] if c["call"] >= 0 else []
            written = extract_code(codec.decode(generation)) if generation else None
            call = {"code": written if written is not None else r.code, "ok": r.ok,
                    "output": r.text if r.text is not None else r.stdout,
                    "error": f"{r.error.kind}: {r.error.message}" if r.error else None,
                    "images": [self._keep_image(p) for p in r.images],
                    "rolled_back": c.get("rolled_back", False)}
            if r.repairs:
                call["repairs"] = list(r.repairs)
                if r.code != call["code"]:
                    call["executed"] = r.code
            calls.append(call)
        return {"step": step, "index": index, "origin": None, "system": system, "user": user,
                "images": [_relative(p) for p in images], "solution": None,
                "completion": _completion_text(codec, rollout.completion_ids), "calls": calls,
                "rewards": {}, "reward": None, "end_reason": rollout.end_reason,
                "error": rollout.error or None, "turns": rollout.turns}

    def _keep_image(self, path: str) -> str | None:
        """A copy of a sandbox image under the output directory (the sandbox's results folder
        goes away), named by content."""
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        target = self.out / IMAGES_DIR / (hashlib.sha256(data).hexdigest()[:20] + Path(path).suffix)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        return target.relative_to(self.out).as_posix()

    # -- the rewards, then the lines ---------------------------------------------------------

    def wrap(self, reward_funcs: list) -> list:
        """The reward functions, each reporting its batch's values here first."""
        self.names = [f.__name__ for f in reward_funcs]
        return [_Reporting(f, self) for f in reward_funcs]

    def _report(self, name: str, values: list, kwargs: dict) -> None:
        if self._pending is None:
            return
        if len(values) != self._size:      # not the batch the rollouts were sampled from
            self._pending = None
            return
        self._rewards[name] = values
        if set(self.names) - set(self._rewards):
            return
        weights = self.weights or [1.0] * len(self.names)
        lines = []
        for record in self._pending:
            i = record["index"]
            record["rewards"] = {n: _number(self._rewards[n][i]) for n in self.names}
            present = [(w, v) for w, v in zip(weights, record["rewards"].values(), strict=True)
                       if v is not None]
            record["reward"] = sum(w * v for w, v in present) if present else None
            for key in ("origin", "solution"):
                column = kwargs.get(key)
                record[key] = column[i] if column is not None and i < len(column) else None
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        self._pending = None
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:      # a log: whole lines appended
            for line in lines:
                f.write(line)
                f.flush()


class _Reporting:
    """A reward function that hands its values to the RolloutLog (TRL logs it by `__name__`)."""

    def __init__(self, func, log: RolloutLog):
        self.func, self.log, self.__name__ = func, log, func.__name__

    def __call__(self, completions, **kwargs):
        values = self.func(completions, **kwargs)
        self.log._report(self.__name__, list(values), kwargs)
        return values


# ---------------------------------------------------------------------------------------------

def _prompt_text(prompt: list) -> tuple[str | None, str, list[str]]:
    """System text, user text (`<image>` where each image part stands) and the image files."""
    system, user, images = None, [], []
    for message in prompt:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        text = []
        for part in parts:
            if part.get("type") == "image":
                text.append(IMAGE_TOKEN)
                if isinstance(part.get("image"), str | os.PathLike):
                    images.append(os.fspath(part["image"]))
            else:
                text.append(part.get("text") or "")
        if message.get("role") == "system":
            system = "".join(text)
        elif message.get("role") == "user":
            user.append("".join(text))
    return system, "\n".join(user), images


def _completion_text(codec, ids: list[int]) -> str:
    """The completion as text: each image's vision tokens shown as one `<image>`."""
    text = codec.decode(ids)
    head, _, tail = codec.placeholder.partition(codec.image_token)
    span = re.escape(head) + f"(?:{re.escape(codec.image_token)})+" + re.escape(tail)
    return re.sub(span, IMAGE_TOKEN, text)


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:                 # another drive (Windows)
        return path


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def checkpoint_step(checkpoint: str | os.PathLike | None) -> int:
    """The step a Trainer checkpoint holds (0: none)."""
    if not checkpoint:
        return 0
    state = Path(checkpoint) / "trainer_state.json"
    if state.is_file():
        return int(json.loads(state.read_text())["global_step"])
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def _step(line: str) -> float:
    """A line's step; a line that does not parse (a crash mid-write) counts as after any step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf
