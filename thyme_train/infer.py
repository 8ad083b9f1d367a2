"""Inference: ask a checkpoint a question about an image and watch it think with code — the same
rollout loop, sandbox and prompt rendering as training (thyme_train.rollout), with the original
evaluation's defaults (THYME.md §5): greedy, at most 5 generation calls, stop at `</code>` to run
the code and at `</answer>`, failed code rounds rolled back and generated again, and a direct
answer when the loop ends without one.

    python -m thyme_train.infer --model DIR_OR_NAME --image PATH --question TEXT [--engine hf|vllm]
        [--prompt-set thyme|thyme-release|FILE.yaml] [--server http://host:8000/v1]

prints the transcript as it happens and saves it (`transcript.json`, processed images beside it)
under `--out`. The `Thyme` class is the Python API the CLI and the evaluator share: `ask` for one
question, `ask_many` for many questions (and several samples of each) in flight at once — one
rollout loop over all of them, so the engine batches their generation calls and the sandbox pool
runs their code side by side.

Prompts come from a prompt set (pipelines.core.prompts): by default the one the checkpoint
records (`prompt_set.yaml`, written by SFT and GRPO: the prompts it was trained with), else
`thyme` (ours) with a notice; `--prompt-set` names another, with a warning when it is not the
recorded one (`checkpoint_prompt_set`). `thyme-release` is the released checkpoints' prompts
verbatim: ask a released checkpoint, which records none, with it. The direct answer (tools off, or the fallback) uses the set's direct prompt: for
`thyme-release` the released evaluation's simple prompt verbatim, else ours (DIRECT_PROMPTS).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.core.atomic import write_bytes, write_json
from sandbox.protocol import IMAGE_TOKEN
from thyme_train.config import doc
from thyme_train.rollout import RolloutConfig

DIRECT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question about the image directly, without writing "
    "code. Put your brief reasoning in <think></think> and the final answer in <answer></answer>."
)
# The released evaluation's fallback (eval/VLMEvalKit/vlmeval/vlm/thyme/utils.py in
# yfzhang114/Thyme, SIMPLE_SYS_PROMPT and generate_prompt_simple_qa), verbatim: system, user.
RELEASE_DIRECT = ("You are a helpful assistant.",
                  "\nYou are an advanced AI assistant specializing in visual question answering "
                  "(VQA). You don't need to perform any image manipulation or reasoning. Give the "
                  "answer to the following question directly.\n**User's Question:** \"{question}\"\n")
DIRECT_PROMPTS = {"thyme-release": RELEASE_DIRECT}   # prompt set -> (system, user template)
_VISION_RUN = re.compile(r"<\|vision_start\|>(?:<\|image_pad\|>)*<\|vision_end\|>")


class InferenceError(RuntimeError):
    """A clear, user-facing failure (bad model path, unreadable image, engine failure)."""


@dataclass(frozen=True)
class PromptChoice:
    """The prompt set a checkpoint is asked with, and why: `source` is `--prompt-set` (asked
    for), `checkpoint` (the set it records: the one it was trained with) or `default` (it
    records none); `notice` is what the user should read (None: nothing to say)."""

    spec: str
    name: str
    source: str
    notice: str | None = None


def checkpoint_prompt_set(model: str, requested: str | None = None) -> PromptChoice:
    """The set to ask `model` with: `requested` when given (a notice when it differs from the
    set the checkpoint records), else the checkpoint's own record (`prompt_set.yaml` in its
    folder, read through `from:<folder>`), else the default set with a notice that the
    checkpoint records none. InferenceError for a set or record that cannot be loaded."""
    from pipelines.core.prompts import (
        DEFAULT_PROMPT_SET,
        FROM_DATASET,
        RECORD_FILE,
        PromptSetError,
        load_prompt_set,
        prompt_set_differences,
        recorded_prompt_set,
    )

    shown = os.path.relpath(model) if os.path.isdir(model) else model
    try:
        recorded = recorded_prompt_set(model) if os.path.isdir(model) else None
        if requested:
            chosen = load_prompt_set(requested)
            differ = prompt_set_differences(chosen, recorded) if recorded else []
            notice = (f"warning: --prompt-set {requested} ({chosen.name}) is not the set {shown} "
                      f"was trained with ({recorded.name}, {RECORD_FILE}): its "
                      f"{', '.join(differ)} differ, so the model sees prompts it was not trained "
                      f"on; leave --prompt-set out to use the checkpoint's") if differ else None
            return PromptChoice(requested, chosen.name, "--prompt-set", notice)
    except PromptSetError as exc:
        raise InferenceError(str(exc)) from None
    if recorded is not None:
        return PromptChoice(f"{FROM_DATASET}{model}", recorded.name, "checkpoint")
    return PromptChoice(DEFAULT_PROMPT_SET, DEFAULT_PROMPT_SET, "default", (
        f"note: {shown} records no prompt set (no {RECORD_FILE}: not trained by this project's "
        f"SFT or GRPO, or before they recorded it): using {DEFAULT_PROMPT_SET!r}; pass "
        f"--prompt-set thyme-release for a released Thyme checkpoint, or the set it was trained "
        f"with"))


def evaluation_rollout(**overrides) -> RolloutConfig:
    """The rollout loop of the original evaluation (THYME.md §5): greedy text and code, no
    repetition penalty, 2,048 new tokens per generation call, failed code rounds rolled back and
    generated again; `overrides`: other RolloutConfig values."""
    return RolloutConfig(**{"max_new_tokens": 2048, "temperature_text": 0.0,
                            "repetition_penalty": 1.0, "on_code_error": "rollback", **overrides})


@dataclass
class InferConfig:
    """How a checkpoint is asked: the model and engine, and the rollout loop of training
    (RolloutConfig) with the original evaluation's defaults."""

    model: str = doc("a local checkpoint directory or a hub model id", default="")
    engine: str = doc("`hf` (transformers generate; CPU or GPU) or `vllm` (needs vLLM, or a "
                      "server: `server`)", default="hf")
    prompt_set: str | None = doc("prompt set: a name (thyme, thyme-release), a YAML path or "
                                 "from:<dataset or checkpoint folder> (pipelines.core.prompts); "
                                 "None: the set the checkpoint records (its prompt_set.yaml, "
                                 "written by SFT and GRPO), else thyme", default=None)
    system_prompt: str | None = doc("system prompt; None: the prompt set's", default=None)
    batch_size: int = doc("hf engine: generation rows per `generate` call", default=8)
    server: str | None = doc("vllm engine: an OpenAI-compatible vLLM server's URL "
                             "(http://host:port/v1, started as thyme_train.vllm_engine says) "
                             "instead of an engine in this process", default=None)
    server_model: str | None = doc("the model name the server serves (None: its only one)",
                                   default=None)
    fallback_direct: bool = doc("answer directly when the loop ends without an answer", default=True)
    sandbox_url: str | None = doc("a sandbox service (`python -m sandbox serve`) to run the code "
                                  "on; None: a sandbox in this process", default=None)
    sandbox_token_file: str | None = doc("the service's token file (None: "
                                         "$THYME_SANDBOX_TOKEN)", default=None)
    max_pixels: int | None = doc("pixel budget per image; None: the processor's (training's)",
                                 default=None)
    rollout: RolloutConfig = doc("the rollout loop: generation calls, token budgets, sampling, "
                                 "the code-error policy, the sandbox timeout, the seed "
                                 "(evaluation_rollout)", default_factory=evaluation_rollout)

    def __post_init__(self):
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be 'hf' or 'vllm', not {self.engine!r}")
        if self.server and self.engine != "vllm":
            raise ValueError("a server is a vLLM server: use engine 'vllm' with it")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")


@dataclass
class Transcript:
    question: str
    image: str | None
    response: str                       # the assistant text (sandbox images shown as <image>)
    answer: str                         # the extracted final answer ("" when none)
    end_reason: str
    code_calls: int
    code_errors: int
    rollbacks: int
    turns: int
    fell_back: bool = False
    error: str = ""
    images: list[str] = field(default_factory=list)   # processed images, saved copies
    calls: list[dict] = field(default_factory=list)   # per code run: code, ok, images, error
    sample: int = 0                                   # which sample of its question


class Thyme:
    """A loaded checkpoint with its engine and a sandbox: `ask(image, question)`,
    `ask_many([(image, question), ...], samples=k)`."""

    def __init__(self, config: InferConfig, sandbox=None):
        from pipelines.core.prompts import PromptSetError, load_prompt_set
        from sandbox.client import open_sandbox
        from thyme_train.engine import ChatCodec
        from thyme_train.rollout import RolloutRunner

        self.config = config
        rollout = config.rollout
        self.prompt_choice = checkpoint_prompt_set(config.model, config.prompt_set)
        try:
            self.prompts = load_prompt_set(self.prompt_choice.spec)
        except PromptSetError as exc:
            raise InferenceError(str(exc)) from None
        self.model, self.processor = load_checkpoint(config.model, config.max_pixels,
                                                     weights=config.engine == "hf")
        self.codec = ChatCodec(self.processor)
        self.engine = self._engine(rollout)
        self._own_sandbox = sandbox is None
        self.sandbox = (open_sandbox(config.sandbox_url, config.sandbox_token_file,
                                     timeout=rollout.sandbox_timeout, isolation=rollout.sandbox_isolation)
                        if sandbox is None else sandbox)
        self.runner = RolloutRunner(self.engine, self.codec, self.sandbox, rollout)
        self.direct = RolloutRunner(self.engine, self.codec, self.sandbox,
                                    dataclasses.replace(rollout, max_turns=1))

    def _engine(self, rollout):
        cfg = self.config
        if cfg.engine == "vllm" and cfg.server:
            from thyme_train.vllm_engine import VLLMServerEngine
            return VLLMServerEngine(cfg.server, self.processor, rollout.sampling(),
                                    model=cfg.server_model, limit_mm_per_prompt=rollout.max_images,
                                    max_model_len=rollout.max_total_tokens)
        if cfg.engine == "vllm":
            from pipelines.core.vllm_config import VLLMConfig
            from thyme_train.vllm_engine import VLLMEngine
            kwargs = {"mm_processor_kwargs": {"max_pixels": cfg.max_pixels}} if cfg.max_pixels else {}
            try:
                return VLLMEngine(VLLMConfig(model=cfg.model, max_images=rollout.max_turns + 1,
                                             max_model_len=rollout.max_total_tokens,
                                             engine_kwargs=kwargs),
                                  self.processor, rollout.sampling())
            except ImportError as exc:
                raise InferenceError(f"the vllm engine needs vLLM installed ({exc})") from None
        from thyme_train.hf_engine import HFEngine
        return HFEngine(self.model, self.processor, rollout.sampling(), batch_size=cfg.batch_size)

    def close(self) -> None:
        if self._own_sandbox:
            self.sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ask(self, image: str | None, question: str, tools: bool = True,
            on_text: Callable[[str, str], None] | None = None, save_dir: Path | None = None,
            force=None) -> Transcript:
        """One question, one rollout. `tools=False` answers directly (the ablation).
        `on_text(kind, text)` follows it live: kind is model | sandbox | rollback | end.
        `force`: a scripted policy (`RolloutRunner.run`'s), for tests and demos."""
        (transcripts,) = self.ask_many([(image, question)], tools=tools, force=force,
                                       on_text=on_text)
        transcript = transcripts[0]
        if save_dir is not None:
            transcript.images = _save_images([p for c in transcript.calls for p in c["images"]],
                                             save_dir)
        return transcript

    def ask_many(self, questions: list[tuple[str | None, str]], tools: bool = True,
                 samples: int = 1, force=None, on_text=None,
                 keys: list[int] | None = None) -> list[list[Transcript]]:
        """`samples` transcripts per (image, question), all rollouts in one loop (the engine
        batches their generation calls, the sandbox runs their code concurrently). A rollout
        that ends without an answer falls back to a direct answer (config.fallback_direct); the
        fallbacks run as one batch too. `keys` (one int per question) seed each question's
        samples independently of the batch (RolloutRunner.run)."""
        from pipelines.core.answers import extract

        prompts = [self._prompt(image, question, tools) for image, question in questions]
        runner = self.runner if tools else self.direct
        calls: dict[int, list[dict]] = {}
        rollouts = runner.run([p for p, _ in prompts], num_generations=samples, force=force,
                              on_event=self._events(on_text, calls), keys=keys)
        out: list[list[Transcript]] = [[] for _ in questions]
        for rollout in rollouts:
            image, question = prompts[rollout.prompt_index][1]
            text = self._text(rollout.completion_ids)
            out[rollout.prompt_index].append(Transcript(
                question=question, image=image, response=text, answer=extract(text).text,
                end_reason=rollout.end_reason, code_calls=rollout.code_calls,
                code_errors=rollout.code_errors, rollbacks=rollout.rollbacks, turns=rollout.turns,
                error=rollout.error, calls=calls.get(id(rollout), []),
                sample=rollout.sample_index))
        missing = [t for ts in out for t in ts if t.end_reason != "answer"]
        if tools and self.config.fallback_direct and missing:
            if on_text:
                on_text("end", f"[no answer ({missing[0].end_reason}); answering directly]")
            direct = self.ask_many([(t.image, t.question) for t in missing], tools=False,
                                   on_text=on_text, keys=None if keys is None else
                                   [keys[i] * 1_009 + t.sample for i, ts in enumerate(out)
                                    for t in ts if t.end_reason != "answer"])
            for t, (d,) in zip(missing, direct, strict=True):
                t.answer, t.fell_back = d.answer, True
                t.response += "\n" + d.response
        return out

    def _prompt(self, image: str | None, question: str, tools: bool):
        """(RolloutPrompt, (image, question)): the prompt set's messages for one question."""
        from thyme_train.chat import thyme_messages

        size = None
        if image is not None:
            size = _image_size(image)
            image = str(Path(image).resolve())
        if tools:
            system = self.config.system_prompt or self.prompts.system
            user = self.prompts.render_user(question, image, size) if image else \
                self.prompts.render_user(question)
        else:
            system, template = DIRECT_PROMPTS.get(self.prompts.name, (DIRECT_SYSTEM_PROMPT, None))
            if template is not None:
                user = (IMAGE_TOKEN if image else "") + template.replace("{question}", question)
            else:
                user = self.prompts.render_user(question, image, size) if image else \
                    self.prompts.render_user(question)
        prompt = self.codec.prompt(thyme_messages(user, None, system), images=[image] if image else [])
        return prompt, (image, question)

    def _text(self, ids) -> str:
        ids = list(ids)
        if ids and ids[-1] == self.codec.tokenizer.eos_token_id:   # the closing end-of-turn
            ids = ids[:-1]
        return _VISION_RUN.sub("<image>", self.codec.decode(ids))

    def _events(self, on_text, calls: dict[int, list[dict]]):
        """Collects each rollout's code runs into `calls` (by rollout id) and, with `on_text`,
        follows the rollouts live."""
        def event(rollout, kind, payload):
            if kind == "sandbox":
                calls.setdefault(id(rollout), []).append({
                    "code": payload.code, "ok": payload.ok, "images": list(payload.images),
                    "error": payload.error.kind if payload.error else None})
            if on_text is None:
                return
            if kind == "generation":
                on_text("model", self._text(payload.token_ids))
            elif kind == "sandbox":
                from sandbox.protocol import render_output
                on_text("sandbox", render_output(payload))
            elif kind == "rollback":
                on_text("rollback", "[the code failed: round rolled back, generating it again]")
            elif kind == "end":
                on_text("end", f"[end: {payload}]")
        return event


def load_checkpoint(model: str, max_pixels: int | None = None, weights: bool = True):
    """Model (None unless `weights`: vLLM loads its own; on the GPU when there is one) and
    processor from a local directory or a hub id, with a clear error otherwise."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    local = Path(model)
    if (model.startswith((".", "/")) or local.exists()) and not (local / "config.json").is_file():
        raise InferenceError(f"model {model}: not a checkpoint directory (no config.json)")
    try:
        processor = AutoProcessor.from_pretrained(model)
        net = None
        if weights:     # the checkpoint's dtype, on the GPU when there is one
            import torch

            net = AutoModelForImageTextToText.from_pretrained(model, dtype="auto").eval()
            if torch.cuda.is_available():
                net = net.to("cuda")
    except (OSError, ValueError) as exc:
        raise InferenceError(f"model {model}: cannot be loaded ({str(exc).splitlines()[0]})") from None
    if max_pixels is not None:
        ip = processor.image_processor
        ip.max_pixels = max_pixels
        if isinstance(getattr(ip, "size", None), dict) and "longest_edge" in ip.size:
            ip.size = {**ip.size, "longest_edge": max_pixels}
    return net, processor


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InferenceError(f"image {path}: cannot be read ({exc})") from None


def _save_images(paths: list[str], out: Path) -> list[str]:
    """Copies of the sandbox's images under out/images/, paths relative to `out`."""
    saved = []
    for k, p in enumerate(paths, start=1):
        target = out / "images" / f"processed_{k:02d}{Path(p).suffix or '.png'}"
        write_bytes(target, Path(p).read_bytes())
        saved.append(target.relative_to(out).as_posix())
    return saved


def add_sandbox_arguments(parser) -> None:
    """The sandbox options every command line that runs model code shares (infer, evaluate)."""
    parser.add_argument("--sandbox-url", default=None, metavar="URL", help="a sandbox service "
                        "(python -m sandbox serve) instead of a sandbox in this process")
    parser.add_argument("--sandbox-token-file", default=None,
                        help="the service's token file (default: $THYME_SANDBOX_TOKEN)")
    parser.add_argument("--sandbox-isolation", default=None, metavar="POLICY",
                        help="sandbox isolation policy: strict (default) or the minimum to run "
                             "with, e.g. landlock+seccomp+rlimits in a container that denies "
                             "namespaces (docs/sandbox.md); default: $THYME_SANDBOX_ISOLATION, "
                             "else strict")


def main(argv: list[str] | None = None) -> int:
    from sandbox import SandboxUnavailable
    from sandbox.policy import summary

    parser = argparse.ArgumentParser(prog="python -m thyme_train.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", help="the image file (omit for a text-only question)")
    parser.add_argument("--question", required=True)
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--server", default=None,
                        help="with --engine vllm: a vLLM server's URL instead of an in-process engine")
    parser.add_argument("--prompt-set", default=None,
                        help="default: the set the checkpoint records (prompt_set.yaml, written "
                             "by SFT and GRPO), else thyme (ours); thyme-release (the released "
                             "checkpoints' prompts, verbatim: pass it for a released "
                             "checkpoint), a YAML file or from:<dataset>")
    parser.add_argument("--out", default="thyme-transcript", help="folder for the transcript")
    parser.add_argument("--no-tools", action="store_true", help="answer directly (no code)")
    parser.add_argument("--on-code-error", choices=("rollback", "show"), default="rollback")
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--max-pixels", type=int, default=None)
    add_sandbox_arguments(parser)
    args = parser.parse_args(argv)

    def show(kind: str, text: str) -> None:
        prefix = {"sandbox": "\n[sandbox] ", "model": ""}.get(kind, "\n")
        print(prefix + text, end="" if kind == "model" else "\n", flush=True)

    try:
        prompts = checkpoint_prompt_set(args.model, args.prompt_set)
        if prompts.notice:
            print(prompts.notice, file=sys.stderr)
        config = InferConfig(model=args.model, engine=args.engine, max_pixels=args.max_pixels,
                             prompt_set=prompts.spec, server=args.server,
                             sandbox_url=args.sandbox_url,
                             sandbox_token_file=args.sandbox_token_file,
                             rollout=evaluation_rollout(on_code_error=args.on_code_error,
                                                       max_turns=args.max_turns,
                                                       max_new_tokens=args.max_new_tokens,
                                                       sandbox_isolation=args.sandbox_isolation))
    except (ValueError, InferenceError) as exc:  # a server without the vllm engine, a bad set
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from sandbox.client import SandboxServiceError

    out = Path(args.out)
    try:
        if args.image:
            _image_size(args.image)            # fail on a bad image before loading a model
        with Thyme(config) as thyme:
            isolation = thyme.sandbox.isolation_report
            print(summary(isolation), file=sys.stderr)
            transcript = thyme.ask(args.image, args.question, tools=not args.no_tools,
                                   on_text=show, save_dir=out)
    except (InferenceError, SandboxServiceError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    record = asdict(transcript)
    record["sandbox_isolation"] = isolation
    record["prompt_set"] = {"name": prompts.name, "source": prompts.source}
    record["image"] = os.path.relpath(transcript.image, out) if transcript.image else None
    write_json(out / "transcript.json", record, indent=1)
    print(f"\nanswer: {transcript.answer!r} ({transcript.end_reason}; {transcript.code_calls} code "
          f"runs, {transcript.rollbacks} rolled back) -> {out / 'transcript.json'}")
    if transcript.end_reason == "engine_error":
        print(f"error: the engine failed: {transcript.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
