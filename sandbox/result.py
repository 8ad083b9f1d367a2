"""What a sandbox call returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Error kinds a caller can branch on.
SYNTAX = "syntax"              # the code does not parse, even after repairs
RUNTIME = "runtime"            # an exception, a crash, or the code ended the interpreter
TIMEOUT = "timeout"            # wall-clock or CPU budget exceeded
MEMORY = "memory"              # memory budget exceeded
OUTPUT_LIMIT = "output_limit"  # printed or wrote more than the budget allows
FORBIDDEN = "forbidden"        # the operating system refused an operation (file, socket, process)
NO_OUTPUT = "no_output"        # ran fine but printed nothing and produced no image
INVALID_IMAGE = "invalid_image"  # a produced image is unreadable or its aspect ratio is over 200
INTERNAL = "internal"          # the sandbox itself failed (a worker died); the code may be fine
ERROR_KINDS = (SYNTAX, RUNTIME, TIMEOUT, MEMORY, OUTPUT_LIMIT, FORBIDDEN, NO_OUTPUT,
               INVALID_IMAGE, INTERNAL)


@dataclass(frozen=True)
class ErrorInfo:
    kind: str
    message: str  # short, fit to show a model: last traceback lines, no host paths


@dataclass
class Result:
    ok: bool
    code: str                         # the code as executed, after repairs
    stdout: str = ""                  # printed output, capped
    text: str | None = None           # the printed result when no image was produced
    images: list[str] = field(default_factory=list)  # produced images, in the results directory
    error: ErrorInfo | None = None
    repairs: list[str] = field(default_factory=list)  # auto-corrections that fired
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stdout_truncated: bool = False
    notes: list[str] = field(default_factory=list)    # e.g. a session restarted after a timeout
    degraded: tuple[str, ...] = ()    # isolation mechanisms missing (only if asked for)
    # `fetch_files` of a call or a session's block (sandbox.call_files): path -> base64, as
    # SandboxFusion returns them; path -> why it was not returned ("not found", a link, ...)
    fetched: dict[str, str] = field(default_factory=dict)
    unfetched: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        d = dict(d)
        if d.get("error"):
            d["error"] = ErrorInfo(**d["error"])
        d["degraded"] = tuple(d.get("degraded", ()))
        return cls(**d)
