"""Write containers/seccomp/thyme.json: Docker's default seccomp profile plus what the strict
sandbox needs to isolate itself (docs/deployment.md).

    python scripts/make_seccomp_profile.py [--check]

containers/seccomp/docker-default.json is moby/profiles' seccomp/default.json, unchanged
(Apache-2.0; the commit is in containers/seccomp/README.md). Docker's default allows `unshare`
and `mount` only to containers holding CAP_SYS_ADMIN; the sandbox's worker needs them, without
that capability, to enter its own user, mount and network namespaces and mount its scratch tmpfs
there (inside a user namespace the container owns: nothing on the host). The sandbox's own
children deny both again with their seccomp filter before any model code runs. Everything else
stays as Docker ships it; the same file serves as a Kubernetes `Localhost` profile.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SECCOMP_DIR = Path(__file__).resolve().parent.parent / "containers" / "seccomp"
THYME_RULE = {
    "names": ["unshare", "mount"],
    "action": "SCMP_ACT_ALLOW",
    "comment": "Thyme sandbox: its worker enters new user, mount and network namespaces and "
               "mounts a size-capped tmpfs on its scratch inside them; its children deny both",
}


def thyme_profile() -> dict:
    profile = json.loads((SECCOMP_DIR / "docker-default.json").read_text())
    profile["syscalls"].append(THYME_RULE)
    return profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if thyme.json is out of date")
    args = parser.parse_args(argv)
    text = json.dumps(thyme_profile(), indent="\t") + "\n"
    target = SECCOMP_DIR / "thyme.json"
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target.name} is out of date: run scripts/make_seccomp_profile.py", file=sys.stderr)
            return 1
        return 0
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    print(f"wrote {target.relative_to(SECCOMP_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
