"""The isolation policy: which confinement mechanisms a sandbox must have before it runs code.

    strict                       every mechanism (the default)
    landlock+seccomp+rlimits     a named minimum: run without the others, refuse below it
    rlimits                      run with whatever the host offers (`allow_degraded=True`)

A policy is a plain string so that every place that starts a sandbox (the Dagster resource,
the command lines, training and evaluation configs, the sandbox service) can pass it through
unchanged. When none is given, `THYME_SANDBOX_ISOLATION` in the environment sets it (one knob
for a whole container or cluster job), else `strict`.
"""

from __future__ import annotations

import os

# In the order a child applies them (docs/sandbox.md, "Isolation policy" says what each stops).
MECHANISMS = ("namespaces", "landlock", "seccomp", "rlimits")
STRICT = "strict"
ENV_VAR = "THYME_SANDBOX_ISOLATION"
HOW_TO_SET = (f"set the isolation policy: Sandbox(isolation=...), the CLIs' --sandbox-isolation, "
              f"the configs' sandbox_isolation, the Dagster resource's `isolation`, or "
              f"{ENV_VAR} in the environment")


def required(policy: str) -> tuple[str, ...]:
    """The mechanisms `policy` requires, in `MECHANISMS` order; ValueError for a bad policy."""
    text = policy.strip().lower()
    if text == STRICT:
        return MECHANISMS
    names = [part.strip() for part in text.split("+")]
    unknown = [n for n in names if n not in MECHANISMS]
    if unknown or not text:
        raise ValueError(f"unknown isolation policy {policy!r}: use {STRICT!r} or mechanisms "
                         f"joined by '+' from {', '.join(MECHANISMS)} "
                         f"(e.g. 'landlock+seccomp+rlimits')")
    return tuple(m for m in MECHANISMS if m in names)


def normalize(policy: str) -> str:
    """The canonical spelling: `strict`, or the required mechanisms in `MECHANISMS` order."""
    needed = required(policy)
    return STRICT if needed == MECHANISMS else "+".join(needed)


def resolve(isolation: str | None = None, allow_degraded: bool = False) -> str:
    """The policy a sandbox runs under: `isolation` if given, `allow_degraded=True` (an alias of
    'rlimits'), else the environment's `THYME_SANDBOX_ISOLATION`, else strict."""
    if isolation is not None and allow_degraded:
        raise ValueError("pass either isolation=... or allow_degraded=True, not both")
    if allow_degraded:
        return "rlimits"
    if isolation is None:
        isolation = os.environ.get(ENV_VAR) or STRICT
    return normalize(isolation)


def refusal(policy: str, missing: dict[str, str]) -> str | None:
    """Why a sandbox with `missing` mechanisms ({name: reason}) may not run under `policy`, or
    None when it may. The message names what is missing, why, and the policy that would run."""
    below = [m for m in required(policy) if m in missing]
    if not below:
        return None
    reasons = "; ".join(f"{m}: {missing[m]}" for m in below)
    available = "+".join(m for m in MECHANISMS if m not in missing)
    return (f"isolation policy {policy!r} requires {', '.join(below)}, unavailable here "
            f"({reasons}). To run with what this host offers ({available}), {HOW_TO_SET}, e.g. "
            f"{ENV_VAR}={available}; docs/sandbox.md lists what each missing mechanism leaves "
            f"uncontained, and docs/deployment.md how to get every mechanism in a container.")


def summary(report: dict) -> str:
    """One line for start-up logs: the policy, what is active and what is missing."""
    active = [f"landlock(ABI {report['landlock_abi']})" if m == "landlock" else m
              for m in report["active"]]
    line = f"sandbox isolation: {'+'.join(active)} active, policy {report['policy']}"
    if report["missing"]:
        line += "; MISSING " + "; ".join(f"{m} ({why})" for m, why in report["missing"].items())
    return line
