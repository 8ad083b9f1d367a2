"""Screenshots of the Dagster UI as a user sees it, for checking the pages and for docs/img/.

    python scripts/ui_screenshots.py --home /abs/dagster_home --out /tmp/shots [--only NAME ...]

Serves the UI on loopback (the webserver alone, so looking launches nothing; `--dev` for `dagster
dev` with its daemon) over an instance that `python -m assets demo` (or `make demo`) filled,
opens each page in headless Chromium (Debian's `chromium`: `apt-get install chromium`),
dismisses the first visit's dialog, waits until the page has drawn what it is about, and saves a
PNG per page. It drives Chromium over the DevTools protocol with `websockets` (already installed
with dagster-webserver), so it installs nothing. Both processes are started in their own session
and stopped by process group (`dagster dev` ignores SIGTERM otherwise, STACK.md).

Not part of `make test`: it needs a browser and a demo instance. `tests/test_ui_metadata.py`
checks what these pages render (types, per-partition numbers, fences) without one.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, probe, timeout: float, every: float = 0.5):
    """`probe()`'s first truthy value within `timeout` seconds, else a TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = probe()
            if value:
                return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def http_json(url: str, method: str = "GET", body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def started(command: list[str], env: dict, log: Path):
    """A process in its own session (so its whole group can be stopped), stopped on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)


class Page:
    """One Chromium tab over the DevTools protocol: navigate, evaluate, click, screenshot."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60, **params):
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def size(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_for(f"load {url}", lambda: self.eval("document.readyState") == "complete", 60)

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def click_text(self, *labels: str, selector: str = "button, a, [role=tab], [role=button]") -> bool:
        """Click the first visible element whose own text is one of `labels`."""
        script = f"""(() => {{
            const labels = {json.dumps(list(labels))};
            for (const el of document.querySelectorAll({json.dumps(selector)})) {{
                const t = (el.innerText || '').trim();
                if (labels.includes(t) && el.offsetParent !== null) {{ el.click(); return true; }}
            }}
            return false; }})()"""
        return bool(self.eval(script))

    def show_markdown(self, key: str) -> bool:
        """Open the `[Show Markdown]` dialog of the metadata row named `key`."""
        script = f"""(() => {{
            for (const row of document.querySelectorAll('tr')) {{
                const cells = row.querySelectorAll('td');
                if (cells.length && cells[0].innerText.trim() === {json.dumps(key)}) {{
                    for (const el of row.querySelectorAll('a, button')) {{
                        if ((el.innerText || '').trim() === '[Show Markdown]') {{ el.click(); return true; }}
                    }}
                }}
            }}
            return false; }})()"""
        return bool(self.eval(script))

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


def dismiss_dialogs(page: Page) -> None:
    """The first visit opens a community/newsletter dialog; close whatever dialog is open."""
    for _ in range(3):
        if not page.eval("!!document.querySelector('[role=dialog]')"):
            return
        text = page.eval("document.querySelector('[role=dialog]').innerText") or ""
        print(f"closing a dialog: {' '.join(text.split())[:80]!r}", file=sys.stderr)
        if not page.click_text("Skip", "Dismiss", "Close", "No thanks", "Not now", "Got it",
                               "Maybe later", selector="[role=dialog] button"):
            page.call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape",
                      windowsVirtualKeyCode=27)
        time.sleep(0.5)


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    reply = http_json(f"{base}/graphql", "POST", {"query": query, "variables": variables or {}})
    if reply.get("errors"):
        raise RuntimeError(f"graphql: {reply['errors']}")
    return reply["data"]


def demo_runs(base: str) -> dict[str, str]:
    """Per job, the run that covered the most assets (the latest of those): the demo's full
    `data_flow` and `training_and_evaluation` runs, not a later re-run of one asset."""
    data = graphql(base, "{ runsOrError(limit: 100) { ... on Runs { results { runId jobName "
                         "assetSelection { path } } } } }")
    best: dict[str, tuple[int, str]] = {}
    for run in data["runsOrError"]["results"]:          # newest first
        selection = run["assetSelection"]                # None: the whole job
        size = len(selection) if selection else 1 << 30
        if run["jobName"] not in best or size > best[run["jobName"]][0]:
            best[run["jobName"]] = (size, run["runId"])
    return {job: run_id for job, (_, run_id) in best.items()}


# name -> (path, texts that must be on the page, actions, viewport height). Actions: ("click",
# label) a tab or button; ("click_all", css) every element that matches (the graph's group toggles);
# ("zoom_out", n) the graph's zoom-out control n times; ("markdown", key) open a metadata row's
# markdown.
def pages(runs: dict[str, str]) -> dict[str, tuple[str, list[str], list[tuple[str, str]], int]]:
    data_flow = runs.get("data_flow", "")
    training = runs.get("training_and_evaluation", "")
    shard = "view=partitions&partition=shard-00001"
    return {
        "lineage": ("/asset-groups", ["training"], [("click_all", '[aria-label="unfold_more"]'), ("zoom_out", "2")], 900),
        "jobs": ("/jobs", ["data_flow", "training_and_evaluation"], [], 700),
        "runs": ("/runs", ["data_flow", "training_and_evaluation"], [], 700),
        "run_data_flow": (f"/runs/{data_flow}", ["source_pool"], [], 900),
        "run_training": (f"/runs/{training}", ["grpo_ats"], [], 900),
        "automation": ("/automation", ["thyme_automation"], [], 600),
        "pool_partition": (f"/assets/pool/source_pool?{shard}", ["rows_in"], [], 1400),
        "pool_preview": (f"/assets/pool/source_pool?{shard}", ["rows_in"],
                         [("markdown", "preview")], 1100),
        "pool_checks": ("/assets/pool/source_pool?view=checks", ["quarantine_rate"], [], 800),
        "code_samples_preview": (f"/assets/samples/code_samples?{shard}", ["preview"],
                                 [("markdown", "preview")], 1400),
        "executions_preview": (f"/assets/samples/executions?{shard}", ["preview"],
                               [("markdown", "preview")], 1400),
        "audited_partition": (f"/assets/samples/audited?{shard}", ["funnel"], [], 2200),
        "audited_examples": (f"/assets/samples/audited?{shard}", ["funnel"],
                             [("markdown", "failed_examples")], 1000),
        "audited_checks": ("/assets/samples/audited?view=checks", ["pass_rate"], [], 800),
        "split_single_round": ("/assets/splits/wo_thinking_thyme_single_round", ["preview"],
                               [("markdown", "preview")], 1400),
        "split_2round": ("/assets/splits/2round", ["preview"], [("markdown", "preview")], 1400),
        "split_rl": ("/assets/splits/rl", ["preview"], [("markdown", "preview")], 1200),
        "sft_stage1": ("/assets/training/sft_stage1", ["curves_training"], [], 2000),
        "sft_plots": ("/assets/training/sft_stage1", ["curves_training"], [("click", "Plots")],
                      1600),
        "grpo_ats": ("/assets/training/grpo_ats", ["curves_optimiser"], [], 2000),
        "grpo_curves": ("/assets/training/grpo_ats", ["curves_optimiser"],
                        [("markdown", "curves_optimiser")], 900),
        "evaluation": ("/assets/evaluation/grpo_ats_scores", ["summary"], [], 1800),
        "evaluation_items": ("/assets/evaluation/grpo_ats_scores", ["summary"],
                             [("markdown", "items_preview")], 900),
        "evaluation_automation": ("/assets/evaluation/grpo_ats_scores?view=automation",
                                  ["grpo_ats_scores"], [], 700),
    }


@contextlib.contextmanager
def ui_session(home: Path, data: str, logs: Path, chromium: str, dev: bool = False):
    """The UI on loopback over `home` and a headless Chromium tab: yields (page, base URL). The
    webserver alone by default, so looking launches nothing; `dev`: `dagster dev`, whose daemon
    ticks the automation sensor (a run it launches is interrupted when the script stops it)."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "THYME_DATA": data or str(home / "data"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bin_dir = Path(sys.executable).parent
    serve = [str(bin_dir / "dagster"), "dev"] if dev else [str(bin_dir / "dagster-webserver")]
    ui_port, cdp_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ui_port}"
    with tempfile.TemporaryDirectory(prefix="thyme-ui-") as scratch, \
            started([*serve, "-m", "assets.definitions", "-h", "127.0.0.1", "-p", str(ui_port)],
                    env, logs / "dagster.log"), \
            started([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile",
                     f"--remote-debugging-port={cdp_port}", "about:blank"], env,
                    logs / "chromium.log"):
        wait_for("the webserver", lambda: urllib.request.urlopen(f"{base}/server_info", timeout=5), 180)
        wait_for("code location", lambda: "data_flow" in json.dumps(graphql(
            base, "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }")),
                 180)
        targets = wait_for("chromium", lambda: http_json(f"http://127.0.0.1:{cdp_port}/json/list"), 60)
        tab = next(t for t in targets if t.get("type") == "page")
        from websockets.sync.client import connect

        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
            page = Page(ws)
            page.call("Page.enable")
            yield page, base


def shoot(page: Page, base: str, name: str, spec: tuple, out: Path, width: int) -> None:
    path, expected, actions, height = spec
    page.size(width, height)
    page.goto(base + path)
    dismiss_dialogs(page)
    try:
        wait_for(f"{name}: {expected}", lambda: all(x in page.text() for x in expected), 60)
    except TimeoutError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    for kind, arg in actions:
        time.sleep(1)
        if kind == "click_all":            # each element matching a CSS selector, one at a time
            for _ in range(12):            # (the page redraws after each), bounded
                clicked = page.eval(f"""(() => {{ const e = document.querySelector({json.dumps(arg)});
                    if (!e) return false; (e.closest('button,[role=button]') || e).dispatchEvent(
                    new MouseEvent('click', {{bubbles: true}})); return true; }})()""")
                if not clicked:
                    break
                time.sleep(1)
        if kind == "zoom_out":             # the graph's zoom-out control, `arg` times
            for _ in range(int(arg)):
                page.eval("""(() => { const e = document.querySelector('[aria-label="zoom_out"]');
                    if (e) (e.closest('button') || e).click(); })()""")
                time.sleep(0.3)
        if kind == "click" and not page.click_text(arg):
            print(f"warning: {name}: nothing to click named {arg!r}", file=sys.stderr)
        if kind == "markdown" and not page.show_markdown(arg):
            print(f"warning: {name}: no markdown value named {arg!r}", file=sys.stderr)
    time.sleep(2)           # images and charts draw after the text
    if not any(kind == "markdown" for kind, _ in actions):
        dismiss_dialogs(page)
    page.screenshot(out / f"{name}.png")
    (out / f"{name}.txt").write_text(page.text())
    print(f"{name}: {out / (name + '.png')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="DAGSTER_HOME of a demo instance (absolute)")
    parser.add_argument("--data", default="", help="THYME_DATA (default: HOME/data)")
    parser.add_argument("--out", required=True, help="folder for the PNGs")
    parser.add_argument("--only", nargs="*", default=[], help="page names to shoot (default: all)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--dev", action="store_true",
                        help="serve with `dagster dev` (its daemon ticks the automation sensor) "
                             "instead of the webserver alone")
    args = parser.parse_args(argv)

    home = Path(args.home)
    if not home.is_absolute() or not (home / "dagster.yaml").is_file():
        parser.error(f"--home {home}: must be absolute and hold dagster.yaml")
    if not Path(args.chromium).is_file():
        parser.error(f"no Chromium at {args.chromium}: apt-get install chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ui_session(home, args.data, out, args.chromium, args.dev) as (page, base):
        specs = pages(demo_runs(base))
        unknown = set(args.only) - set(specs)
        if unknown:
            parser.error(f"unknown pages {sorted(unknown)}; known: {sorted(specs)}")
        for name, spec in specs.items():
            if not args.only or name in args.only:
                shoot(page, base, name, spec, out, args.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
