"""The sandbox on realistic Thyme snippets: images, computations, sessions, errors, the pool."""

import ctypes
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pytest
from PIL import Image

from sandbox import Job, Sandbox, SandboxUnavailable
from sandbox.core import _WorkerHandle, launch_subprocess
from sandbox.outputs import printed_image_paths, remove_tree
from sandbox.protocol import VIRTUAL_OUTPUT_DIR, render_output

OUT = VIRTUAL_OUTPUT_DIR


def test_cv2_crop_and_zoom_produces_the_right_pixels(sandbox, sample_image):
    code = f"""
import cv2
import os
img = cv2.imread(image_path)
x1, y1, x2, y2 = 100, 50, 300, 200   # region of interest
crop = img[y1:y2, x1:x2]
zoomed = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
os.makedirs("{OUT}", exist_ok=True)
path = os.path.join("{OUT}", "sample_zoom.png")
cv2.imwrite(path, zoomed)
print(path)
"""
    r = sandbox.run(code, inputs=[sample_image])
    assert r.ok, r.error
    assert r.repairs == ["output_dir"]
    assert len(r.images) == 1 and r.images[0].startswith(sandbox.results_dir + os.sep)
    produced = cv2.imread(r.images[0])
    expected = cv2.resize(cv2.imread(sample_image)[50:200, 100:300], None, fx=2, fy=2,
                          interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(produced, expected)
    assert r.text is None and render_output(r) == "<sandbox_output><image></sandbox_output>"
    assert OUT in r.stdout and "/tmp/" not in r.stdout  # the model sees its own path back


def test_pil_rotate_crop_contrast(sandbox, sample_image):
    code = f"""
from PIL import Image, ImageEnhance
img = Image.open(image_path)
rotated = img.rotate(90, expand=True)
region = rotated.crop((10, 10, 210, 110))
processed_path = "{OUT}/enhanced.jpg"
ImageEnhance.Contrast(region).enhance(1.8).save(processed_path)
"""
    r = sandbox.run(code, inputs=[sample_image])
    assert r.ok, r.error
    assert len(r.images) == 1  # found through `processed_path`, nothing printed
    assert Image.open(r.images[0]).size == (200, 100)


def test_clahe_on_a_grayscale_image(sandbox, sample_image):
    code = f"""
import cv2
gray = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2GRAY)
out = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
cv2.imwrite("{OUT}/clahe.png", out)
print("{OUT}/clahe.png")
"""
    r = sandbox.run(code, inputs=[sample_image])
    assert r.ok, r.error
    img = Image.open(r.images[0])
    assert img.mode == "L" and img.size == (640, 480)


def test_relative_output_name_is_collected(sandbox, sample_image):
    r = sandbox.run("import cv2\ncv2.imwrite('small.jpg', cv2.imread(image_path)[:64, :64])\n"
                    "print('saved small.jpg')", inputs=[sample_image])
    assert r.ok and len(r.images) == 1


def test_sympy_and_numpy_computations_return_text(sandbox):
    r = sandbox.run("import sympy as sp\nx = sp.symbols('x')\n"
                    "print(sp.solve(x**2 - 5*x + 6, x))")
    assert r.ok and r.text == "[2, 3]" and r.images == []
    r = sandbox.run("import numpy as np\nA = np.array([[2, 1], [1, 3]])\n"
                    "print(np.linalg.solve(A, [3, 5]).round(6).tolist())")
    assert r.ok and r.text == "[0.8, 1.4]"


def test_float_precision_repair_keeps_digits(sandbox):
    r = sandbox.run("ratio = 2 / 3\nprint(f'ratio = {ratio:.2f}')")
    assert r.ok and r.text == "ratio = 0.66666667" and r.repairs == ["float_precision"]


def test_functions_and_comprehensions_see_top_level_names(sandbox):
    # The original ran exec with separate globals/locals: this raised NameError there.
    code = "scale = 3\ndef f(v):\n    return v * scale\nprint([f(i) + scale for i in range(3)])"
    r = sandbox.run(code)
    assert r.ok and r.text == "[3, 6, 9]"


def test_session_keeps_variables_across_blocks(sandbox, sample_image):
    with sandbox.session(inputs=[sample_image]) as s:
        r1 = s.run("import cv2\nimg = cv2.imread(image_path)\nprint(img.shape)")
        r2 = s.run(f"crop = img[0:100, 0:200]\ncv2.imwrite('{OUT}/c.png', crop)\n"
                   f"print('{OUT}/c.png')")
        r3 = s.run(f"again = cv2.imread('{OUT}/c.png')\nprint(again.shape, crop.shape)")
    assert r1.text == "(480, 640, 3)"
    assert r2.ok and len(r2.images) == 1
    assert r3.ok and r3.text == "(100, 200, 3) (100, 200, 3)"


def test_session_after_timeout_runs_fresh_and_says_so(sandbox):
    with sandbox.session() as s:
        assert s.run("a = 1\nprint(a)").ok
        r = s.run("while True:\n    pass", timeout=1)
        assert r.error.kind == "timeout"
        r = s.run("print(a)")
    assert r.error.kind == "runtime" and "NameError" in r.error.message
    assert any("state was lost" in n for n in r.notes)


def test_concurrent_sessions_go_to_different_workers(sandbox):
    """A session goes to the worker with the fewest open ones. In plain turns two trajectories
    at once shared a worker whenever the sessions before them differed in length, and that
    worker ran both one call at a time while the other stood idle."""
    with sandbox.session() as a:
        with sandbox.session() as b:
            assert a.handle is not b.handle
            assert a.run("x = 1\nprint(x)").ok and b.run("x = 2\nprint(x)").ok
        for _ in range(2):     # b is closed: its worker is free, a's is not (turns alternate)
            with sandbox.session() as c:
                assert c.handle is not a.handle
                assert c.run("print(7)").text == "7"
        assert a.run("print(x)").text == "1"
    a.close()                  # closing twice is harmless


def test_image_path_predefined_and_repaired(sandbox, sample_image):
    r = sandbox.run("print(image_path.endswith('sample.jpg'))", inputs=[sample_image])
    assert r.text == "True"
    r = sandbox.run("image_path = '/mnt/data/images/img_001.jpg'\nimport cv2\n"
                    "print(cv2.imread(image_path).shape)", inputs=[sample_image])
    assert r.ok and r.text == "(480, 640, 3)" and "image_path" in r.repairs
    assert "/tmp" not in r.code  # the code shown back has no host paths...
    assert "sample.jpg" in r.code  # ...but names the input


def test_errors_are_short_and_free_of_host_paths(sandbox, sample_image):
    r = sandbox.run("import numpy as np\nx = np.zeros((2, 2))\ny = x @ np.zeros((3, 3))",
                    inputs=[sample_image])
    assert r.error.kind == "runtime"
    assert "line 3: y = x @ np.zeros((3, 3))" in r.error.message
    assert "ValueError" in r.error.message
    for host in ("/root", "/work", "/tmp", "site-packages", sys.prefix):
        assert host not in r.error.message
    r = sandbox.run("import cv2\nimg = cv2.imread('/nonexistent.jpg')\nprint(img.shape)")
    assert r.error.kind == "runtime" and "AttributeError" in r.error.message


def test_syntax_error(sandbox):
    r = sandbox.run("print('unclosed'")
    assert r.error.kind == "syntax" and "line 1" in r.error.message


def test_no_output(sandbox):
    r = sandbox.run("x = 1 + 1")
    assert r.error.kind == "no_output" and not r.ok


def test_clean_exit_counts_as_done(sandbox):
    assert sandbox.run("print('done')\nimport sys\nsys.exit(0)").text == "done"


def test_map_keeps_job_order_and_uses_every_worker(sandbox, sample_image):
    jobs = [Job(f"import os, time\ntime.sleep(0.05)\nprint({i}, os.getppid())") for i in range(12)]
    jobs.insert(5, {"code": "raise ValueError('bad job')"})
    results = sandbox.map(jobs)
    assert [r.text.split()[0] for r in results if r.ok] == [str(i) for i in range(12)]
    assert results[5].error.kind == "runtime" and "bad job" in results[5].error.message
    assert len({r.text.split()[1] for r in results if r.ok}) == sandbox.workers


def test_map_is_parallel(sandbox):
    start = time.perf_counter()
    results = sandbox.map([Job("import time\ntime.sleep(1.0)\nprint(1)")] * 4)
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results)
    assert elapsed < 4 * 1.0 * 0.8  # 2 workers: about half the serial time (1.2 s of slack)


def test_worker_killed_mid_job_returns_internal_and_is_replaced(sample_image):
    with Sandbox(workers=1) as sb:
        victim = sb._handles[0].pid
        killer = os.fork()  # not a thread: forked test workers need a single-threaded parent
        if killer == 0:
            time.sleep(0.5)
            os.kill(victim, 9)
            os._exit(0)
        r = sb.run("import time\ntime.sleep(5)\nprint(1)")
        os.waitpid(killer, 0)
        assert r.error.kind == "internal"
        assert sb.run("print(2)").text == "2"
        assert sb._handles[0].pid != victim


def test_missing_input_is_a_caller_error(sandbox, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        sandbox.run("print(1)", inputs=[tmp_path / "missing.jpg"])


def test_stdout_is_capped():
    with Sandbox(workers=1, stdout_limit=1000) as sb:
        r = sb.run("for i in range(10000):\n    print(i)")
    assert r.error.kind == "output_limit" and len(r.stdout) <= 1000 and r.stdout_truncated


def test_results_survive_close_when_the_caller_owns_the_directory(tmp_path, sample_image):
    with Sandbox(workers=1, results_dir=tmp_path / "res") as sb:
        r = sb.run(f"import cv2\ncv2.imwrite('{OUT}/a.png', cv2.imread(image_path))\n"
                   f"print('{OUT}/a.png')", inputs=[sample_image])
    assert os.path.isfile(r.images[0]) and r.images[0].startswith(str(tmp_path / "res"))


# A host "without Landlock", simulated in the worker's own fresh interpreter.
NO_LANDLOCK = functools.partial(launch_subprocess,
                                prelude="from sandbox import confine\nconfine.landlock_abi = lambda: 0")


def test_missing_mechanism_fails_loudly_unless_degraded_is_asked_for():
    with pytest.raises(SandboxUnavailable, match="Landlock"):
        Sandbox(workers=1, launcher=NO_LANDLOCK)
    with Sandbox(workers=1, allow_degraded=True, launcher=NO_LANDLOCK) as sb:
        r = sb.run("print(1)")
    assert r.ok and r.degraded == ("landlock",) and sb.degraded == ("landlock",)


def test_cli_run_json(tmp_path, sample_image):
    script = tmp_path / "zoom.py"
    script.write_text(f"import cv2\ncv2.imwrite('{OUT}/z.png', cv2.imread(image_path)[:64, :64])\n"
                      f"print('{OUT}/z.png')\n")
    proc = subprocess.run([sys.executable, "-m", "sandbox", "run", str(script), "--input",
                           sample_image, "--json", "--results-dir", "res"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert payload["ok"] and payload["images"][0].startswith("res/")
    assert (tmp_path / payload["images"][0]).is_file()


# A worker whose scratch cleanup silently does nothing, simulated in its own fresh interpreter.
LEAKY_CLEANUP = functools.partial(launch_subprocess,
                                  prelude="from sandbox import outputs\n"
                                          "outputs.remove_tree = lambda path: None")


def test_worker_that_cannot_free_its_scratch_is_replaced():
    """The health rule: after a call, a worker that finds its scratch not freed (no session
    open) retires; the call keeps its result and says so, the next call runs on a fresh worker."""
    with Sandbox(workers=1, launcher=LEAKY_CLEANUP) as sb:
        old = sb._handles[0].pid
        r = sb.run("open('left.bin', 'wb').write(bytes(1 << 20))\nprint('wrote')")
        assert r.ok and r.text == "wrote", r
        assert any("replaced after this call" in n and "scratch" in n for n in r.notes), r
        assert sb._handles[0].pid != old
        assert sb.run("print(2)").text == "2"


def test_worker_is_probed_after_a_call_that_stopped_its_child(monkeypatch):
    probes = []
    real = _WorkerHandle.request

    def spy(self, message, timeout):
        probes.append(message["op"])
        return real(self, message, timeout)

    monkeypatch.setattr(_WorkerHandle, "request", spy)
    with Sandbox(workers=1) as sb:
        assert sb.run("print(1)").ok
        r = sb.run("while True:\n    pass", timeout=0.5)
        assert r.error.kind == "timeout" and r.notes == [], r
        assert sb.run("print(2)").text == "2"
    assert probes == ["run", "run", "probe", "run"]


def test_remove_tree_handles_any_depth(tmp_path):
    # on tmpfs where there is one: it is what scratch is, and this disk may be slow
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    root = tempfile.mkdtemp(dir=base)
    fd = os.open(root, os.O_RDONLY)
    for i in range(1500):  # deeper than shutil.rmtree's recursion, longer than PATH_MAX
        if i % 300 == 0:
            os.mkdir("side", dir_fd=fd)
            os.close(os.open("side/f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        os.mkdir("d" * 5, dir_fd=fd)
        sub = os.open("d" * 5, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    remove_tree(root)
    assert not os.path.exists(root)


def test_printed_image_paths():
    text = "see /mnt/x/a.png and 'b.JPEG', c.jpg.bak <d.tiff> e.png.png f.pngx"
    assert printed_image_paths(text) == ["/mnt/x/a.png", "b.JPEG", "c.jpg", "d.tiff", "e.png.png"]
    assert printed_image_paths("." * 63000) == []


def test_model_code_sees_library_defaults(sandbox):
    """The worker's warm-up (which runs the image checker once) changes nothing a snippet sees
    (PIL's PNG level aside, on purpose: sandbox.deflate and test_sandbox_zlib.py)."""
    r = sandbox.run("from PIL import Image\nprint(Image.MAX_IMAGE_PIXELS)")
    assert r.ok and r.text == str(1024 * 1024 * 1024 // 4 // 3), r  # PIL's own default


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc < 2.33")
def test_a_child_finds_opencv_colour_tables_built(sandbox):
    """OpenCV builds its Lab/Luv tables on the first such conversion (~4.6 MB, ~75 ms): the
    warm-up builds them once, so a child that enhances contrast in Lab allocates nothing for
    them (what malloc holds before and after, from glibc's mallinfo2)."""
    code = """import ctypes
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def held():
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd
small = np.zeros((8, 8, 3), np.uint8)
before = held()
cv2.cvtColor(cv2.cvtColor(small, cv2.COLOR_BGR2LAB), cv2.COLOR_LAB2BGR)
cv2.cvtColor(cv2.cvtColor(small, cv2.COLOR_BGR2LUV), cv2.COLOR_LUV2BGR)
print(held() - before)"""
    r = sandbox.run(code)
    assert r.ok, r.error
    assert int(r.text) < 64 * 1024, f"the conversions kept {r.text} bytes (~4.6 MB unwarmed)"


def test_a_child_imports_nothing_for_common_numerics(sandbox):
    """What contrast and computation snippets use was imported by the warm-up: a percentile
    (numpy.ma), a definite integral (sympy.integrals' methods), the statistics module."""
    code = """import sys
before = set(sys.modules)
import statistics
import sympy as sp
x = sp.symbols("x")
np.percentile(np.arange(100), (1, 99))
sp.integrate(x**3 - x, (x, 0, 2))
statistics.median([3, 1, 2])
print(sorted(set(sys.modules) - before))"""
    r = sandbox.run(code)
    assert r.ok, r.error
    assert r.text == "[]", f"imported in the child: {r.text}"


def test_sympy_is_loaded_in_the_children_of_code_that_names_it():
    """Two zygotes (sandbox.fork_server): code that names sympy gets a child with sympy warmed;
    other code a leaner one (no sympy: a cheaper fork and exit), where importing it later in a
    session still works, and the session keeps its variables. (A worker of its own, started as
    in production: the emulated deployments fork theirs from this process, sympy loaded.)"""
    check = 'import sys\nprint(("sym" + "py") in sys.modules)'   # (names it only at run time)
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run(check).text == "False"
        r = sandbox.run("import sys\nloaded = 'sympy' in sys.modules\nimport sympy\nprint(loaded)")
        assert r.ok and r.text == "True", r
        with sandbox.session() as s:
            assert s.run("x = 3\n" + check).text == "False"
            r = s.run("import sympy\nprint(sympy.sqrt(16) + x)")
            assert r.ok and r.text == "7", r


def _huge_pages_on_malloc() -> bool:
    """glibc 2.35+ (the `hugetlb` tunable) and a kernel that gives huge pages on madvise."""
    version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    try:
        major, minor = (int(x) for x in version.split()[1].split(".")[:2])
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            thp = f.read()
    except (IndexError, ValueError, OSError):
        return False
    return (major, minor) >= (2, 35) and ("[always]" in thp or "[madvise]" in thp)


@pytest.mark.skipif(not _huge_pages_on_malloc(), reason="no glibc hugetlb tunable or THP off")
def test_a_child_faults_its_buffers_in_huge_pages(sandbox):
    """A fresh child's large buffers cost one page fault per 2 MB, not one per 4 KB (the
    snippets' decodes and resizes are all new memory in every child)."""
    code = """import resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = bytearray(64 << 20)   # zero-filled: every page touched
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""
    r = sandbox.run(code)
    assert r.ok, r.error
    assert int(r.text) < 2000, f"{r.text} page faults for 64 MB (16,384 with 4 KB pages)"
