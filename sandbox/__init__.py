"""An isolated executor for model-written Python (Thyme's sandbox), shared by data, training
and inference. Imports nothing from the rest of the project."""

from sandbox.core import Job, Sandbox, SandboxUnavailable, Session
from sandbox.result import ErrorInfo, Result

__all__ = ["ErrorInfo", "Job", "Result", "Sandbox", "SandboxUnavailable", "Session"]
