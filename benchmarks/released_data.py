"""Released-format data through the pipeline (issue 14): small Thyme-SFT, Thyme-RL, DeepEyes and
generic files written with `pipelines.core.formats`, on real photos, counted at every step.

    python benchmarks/released_data.py [--photos DIR] [--out report.json]

--photos: a folder of .png/.jpg photos (e.g. scikit-image's samples, `skimage/data/` of its
wheel); without it, smooth random pictures with shapes. Steps, each counted and timed:
  ingest     the four files (text-only, multi-image and broken rows among them)
  sft        Thyme-SFT: each row's released response parsed as a trajectory, run in the sandbox,
             audited; splits (RL drawn from the audited samples); SFT and RL datasets published
  rl         Thyme-RL, DeepEyes, generic: RL prompts straight from the pool (rl_source=pool,
             rl_min_image_side=64); RL dataset published
  audit      model-like trajectories on the Thyme-RL photos (task unknown, no ground truth):
             a good crop, the whole image as a "crop", CLAHE, brightening as "contrast", a
             rotation, a computation; the funnel per check and how each kind fared
  decontam   a miniature VLMEvalKit TSV (an exact pool image, a re-encoded one, a reference row, a
             near-duplicate question, unrelated items) and a JSONL benchmark against the Thyme-RL
             and generic pools
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageEnhance  # noqa: E402

from pipelines.core.formats import (  # noqa: E402
    SourceRow,
    deepeyes_table,
    thyme_rl_table,
    thyme_sft_table,
    write_parquet,
)
from pipelines.datasets.decontaminate import DecontaminationConfig  # noqa: E402
from pipelines.datasets.publish import PublishConfig, publish  # noqa: E402
from pipelines.datasets.splits import SplitConfig, build_splits  # noqa: E402
from pipelines.pool.ingest import IngestConfig, ingest  # noqa: E402
from pipelines.samples.audit import audit_many  # noqa: E402
from pipelines.samples.execute import execute  # noqa: E402
from pipelines.samples.shards import audit_funnel, read_samples, write_trajectories  # noqa: E402
from pipelines.samples.teachers.parse import parse_trajectory  # noqa: E402
from sandbox import Sandbox  # noqa: E402

OUT = "/mnt/data/temp_processed_images"


def load_photos(folder: str | None, n: int = 24) -> list[Image.Image]:
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg")
                       and p.stat().st_size > 40_000)
        photos = [Image.open(p).convert("RGB") for p in files]
        return [p for p in photos if min(p.size) >= 200][:n]
    photos = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(8):
            x, y = (int(v) for v in rng.integers(0, 500, 2))
            draw.ellipse((x, y, x + 90, y + 60), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        photos.append(img)
    return photos


def jpeg(img: Image.Image, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _box(img):
    w, h = img.size
    return (w // 4, h // 4, w // 4 + w // 3, h // 4 + h // 3)


def _think(reasoning, code, output, after, answer):
    return (f"<think>{reasoning}<code>\n```python\n{code}\n```\n</code><sandbox_output>{output}"
            f"</sandbox_output>{after}</think> <answer>{answer}</answer>")


def sft_rows(photos) -> list[SourceRow]:
    rows = []
    for i, img in enumerate(photos[:16]):
        x1, y1, x2, y2 = _box(img)
        crop_code = (f"from PIL import Image\nimg = Image.open(image_path)\n"
                     f"img.crop(({x1}, {y1}, {x2}, {y2})).resize(({2 * (x2 - x1)}, {2 * (y2 - y1)}))"
                     f".save('{OUT}/crop_{i}.png')\nprint('{OUT}/crop_{i}.png')")
        produced = jpeg(img.crop((x1, y1, x2, y2)).resize((2 * (x2 - x1), 2 * (y2 - y1))), "PNG")
        kind = i % 4
        if kind == 0:       # a crop
            rows.append(SourceRow(f"What is in the upper middle of photo {i}?", [jpeg(img), produced],
                                  response=_think("Zoom in.", crop_code, "<image>", "Now it is clear.", f"object {i}"),
                                  image_path=f"/data/photo_{i}.jpg", image_size=img.size))
        elif kind == 1:     # text-only computation (the release's computation split)
            a, b, c = 12 + i, 7, 3
            rows.append(SourceRow(f"A crate holds {a} boxes of {b} apples and {c} loose apples. How "
                                  "many apples are there?", [],
                                  response=_think("Multiply and add.", f"print({a} * {b} + {c})",
                                                  str(a * b + c), "That is the total.", str(a * b + c))))
        elif kind == 2:     # two input images
            other = photos[(i + 1) % len(photos)]
            rows.append(SourceRow(f"Which of the two photos ({i}) is brighter?", [jpeg(img), jpeg(other), produced],
                                  inputs=2, response=_think("Zoom into the first.", crop_code, "<image>",
                                                            "The first is brighter.", "the first"),
                                  image_path=f"/data/pair_{i}.jpg", image_size=img.size))
        else:               # an error correction: a typo, then the fix
            wrong = crop_code.replace("img.crop", "im.crop", 1)
            response = ("<think>Zoom in.<code>\n```python\n" + wrong + "\n```\n</code><sandbox_output>"
                        "Error (exception): NameError: name 'im' is not defined</sandbox_output>"
                        "A typo; again.<code>\n```python\n" + crop_code + "\n```\n</code><sandbox_output>"
                        "<image></sandbox_output>Clear now.</think> <answer>object " + str(i) + "</answer>")
            rows.append(SourceRow(f"Read the middle of photo {i}.", [jpeg(img), produced], response=response,
                                  image_path=f"/data/fix_{i}.jpg", image_size=img.size))
    rows.append(SourceRow("Two photos?", [jpeg(photos[0])], inputs=2, response="<answer>x</answer>"))  # mismatch
    return rows


def rl_rows(photos) -> list[SourceRow]:
    answers = ["red", "12", "A", "yes", "A wide landscape with a road and several parked cars along it"]
    rows = []
    for i, img in enumerate(photos[:20]):
        images = [jpeg(img)] + ([jpeg(photos[(i + 3) % len(photos)])] if i % 5 == 4 else [])
        question = f"Question {i} about the photo?" + ("\nA. left\nB. right" if answers[i % 5] == "A" else "")
        rows.append(SourceRow(question, images, answer=answers[i % 5], image_size=img.size,
                              image_path=f"/data/rl_{i}.jpg"))
    rows.append(SourceRow("Tiny?", [jpeg(photos[0].resize((40, 40)))], answer="red", image_size=(40, 40)))
    return rows


def ingest_all(tmp: Path, photos) -> dict:
    files = {"thyme-sft": thyme_sft_table(sft_rows(photos)), "thyme-rl": thyme_rl_table(rl_rows(photos)),
             "deepeyes": deepeyes_table([SourceRow(f"DeepEyes question {i}?", [jpeg(p)], answer=str(i))
                                         for i, p in enumerate(photos[:12])])}
    (tmp / "generic" / "img").mkdir(parents=True)
    lines = []
    for i, p in enumerate(photos[:8]):
        p.save(tmp / "generic" / "img" / f"{i}.jpg", quality=90)
        lines.append({"question": f"Generic {i}: what colour dominates?", "image": f"img/{i}.jpg",
                      "answer": "blue" if i % 2 else "", "difficulty": "easy" if i % 3 else "hard"})
    lines += [{"question": f"What is {i} squared plus one, as asked in the long generic word problem number {i}?",
               "answer": i * i + 1} for i in range(4)]
    (tmp / "generic" / "g.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = {}
    for fmt, table in files.items():
        write_parquet(table, tmp / f"{fmt}.parquet")
        out[fmt] = _ingest(fmt, tmp / f"pool-{fmt}", [str(tmp / f"{fmt}.parquet")])
    out["generic"] = _ingest("generic", tmp / "pool-generic", [str(tmp / "generic" / "g.jsonl")],
                             image_root=str(tmp / "generic"))
    return out


def _ingest(fmt, out, inputs, **kw) -> dict:
    t0 = time.perf_counter()
    report = ingest(IngestConfig(fmt, str(out), inputs, workers=2, **kw), progress=False)
    return {"rows": report["rows_read"], "kept": report["kept"], "quarantined": report["quarantined_by_reason"],
            "seconds": round(time.perf_counter() - t0, 2)}


def sft_flow(tmp: Path, sandbox) -> dict:
    pool = tmp / "pool-thyme-sft"
    samples = read_samples(pool / "samples" / "shard-00000.parquet")
    trajectories, unparsed = [], Counter()
    for s in samples.values():
        # the release's response as the trajectory (a first block that errored: error correction)
        outputs = re.findall(r"<sandbox_output>(.*?)</sandbox_output>", s.reference["response"], re.S)
        kind = "error_correction" if any(o.startswith("Error") for o in outputs[:-1]) else None
        t, bad = parse_trajectory(s.reference["response"], s, "reference", kind=kind)
        if t is None:
            unparsed[bad["reason"]] += 1
        else:
            trajectories.append(t)
    t0 = time.perf_counter()
    from pipelines.core.images import ImageStore
    execute(trajectories, samples, ImageStore(pool / "images"), sandbox)
    audited = audit_many(trajectories, samples, pool / "images")
    write_trajectories(audited, tmp / "sft-audited" / "shard-00000.parquet")
    seconds = time.perf_counter() - t0
    report = build_splits([str(tmp / "sft-audited" / "shard-00000.parquet")],
                          [str(pool / "samples" / "shard-00000.parquet")], tmp / "sft-splits",
                          SplitConfig(test_share=0.2, mix={}))
    published = {kind: publish(tmp / "sft-splits", pool / "images", tmp / f"published-sft-{kind}",
                               PublishConfig(kind=kind, funnel=report))["rows"] for kind in ("sft", "rl")}
    has_image = Counter()
    import pyarrow.parquet as pq
    for part in ("train", "test"):
        for r in pq.read_table(tmp / "sft-splits" / "computation" / f"{part}.parquet").to_pylist():
            has_image[str(r["has_image"])] += 1
    return {"samples": len(samples), "trajectories": len(trajectories), "unparsed": dict(unparsed),
            "passed": sum(bool(t.passed) for t in audited), "tasks": dict(Counter(t.task for t in audited)),
            "funnel": audit_funnel(audited), "audit_seconds": round(seconds, 2),
            "split_rows": report["rows"], "computation_has_image": dict(has_image),
            "multi_image_rows": _multi(tmp / "sft-splits"), "quarantined": report["validated"]["quarantined"],
            "published": published}


def _multi(split_dir: Path) -> int:
    import pyarrow.parquet as pq
    n = 0
    for f in split_dir.glob("*/*.parquet"):
        if f.name == "quarantine.parquet":
            continue
        for r in pq.read_table(f, columns=["question"]).to_pylist():
            n += r["question"].count("<image>") > 1
    return n


def rl_flow(tmp: Path, fmt: str, decontaminate=None) -> dict:
    pool = tmp / f"pool-{fmt}"
    t0 = time.perf_counter()
    report = build_splits([], [str(pool / "samples" / "shard-00000.parquet")], tmp / f"rl-splits-{fmt}",
                          SplitConfig(rl_source="pool", rl_min_image_side=64, test_share=0.1,
                                      decontaminate=decontaminate))
    rows = publish(tmp / f"rl-splits-{fmt}", pool / "images", tmp / f"published-rl-{fmt}",
                   PublishConfig(kind="rl", funnel=report))["rows"]
    out = {"rl_prompts": report["rl_prompts"], "rows": rows, "seconds": round(time.perf_counter() - t0, 2)}
    if decontaminate is not None:
        out["decontamination"] = report["decontamination"]["benchmarks"]
    return out


def audit_flow(tmp: Path, sandbox, photos) -> dict:
    """Model-like trajectories on the Thyme-RL photos: no task, no box, no angle."""
    from pipelines.core.images import ImageStore
    from pipelines.core.trajectory import Trajectory, Turn
    pool = tmp / "pool-thyme-rl"
    samples = {k: s for k, s in read_samples(pool / "samples" / "shard-00000.parquet").items()
               if s.images and min(s.images[0].width, s.images[0].height) >= 200}
    codes = {
        "crop": "img = Image.open(image_path)\nw, h = img.size\nc = img.crop((w // 4, h // 4, w // 2, h // 2))"
                "\nc = c.resize((c.width * 2, c.height * 2))\nc.save('{o}/c.png')\nprint('{o}/c.png')",
        "whole_as_crop": "img = Image.open(image_path)\nimg.crop((0, 0, img.width, img.height)).resize("
                         "(img.width // 2, img.height // 2)).save('{o}/w.png')\nprint('{o}/w.png')",
        "clahe": "g = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2GRAY)\n"
                 "cv2.imwrite('{o}/e.png', cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g))\nprint('{o}/e.png')",
        "brighten_as_contrast": "from PIL import ImageEnhance\nimg = Image.open(image_path)\n"
                                "ImageEnhance.Brightness(img).enhance(1.3).save('{o}/b.png')  # contrast?\nprint('{o}/b.png')",
        "rotate": "img = Image.open(image_path)\nimg.rotate(90, expand=True).save('{o}/r.png')\nprint('{o}/r.png')",
        "compute": "img = Image.open(image_path)\nprint(img.width * img.height)",
    }
    trajectories, intended = [], {}
    for s in samples.values():
        for name, code in codes.items():
            answer = str(s.images[0].width * s.images[0].height) if name == "compute" else s.answer
            t = Trajectory(sample_id=s.id, teacher=f"model/{name}", kind="single", task=s.task,
                           turns=[Turn("Let me look.", code.format(o=OUT)), Turn("So.")], answer=answer)
            trajectories.append(t)
            intended[t.id] = name
    execute(trajectories, samples, ImageStore(pool / "images"), sandbox)
    t0 = time.perf_counter()
    audited = audit_many(trajectories, samples, pool / "images")
    seconds = time.perf_counter() - t0
    by_kind = {name: Counter() for name in codes}
    for t in audited:
        by_kind[intended[t.id]]["passed" if t.passed else "failed"] += 1
        by_kind[intended[t.id]][f"task:{t.task}"] += 1
        for c in t.audit:
            if c.verdict == "fail":
                by_kind[intended[t.id]][f"failed:{c.name}"] += 1
    return {"photos": len(samples), "trajectories": len(audited), "funnel": audit_funnel(audited),
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "trajectories_per_s": round(len(audited) / seconds, 1)}


def benchmarks_files(tmp: Path, photos) -> tuple[str, ...]:
    """A V*-like TSV and a JSONL benchmark that share some items with the pools."""
    from pipelines.core.images import ImageStore  # noqa: F401  (store layout: pool/images/<h2>/<h>.jpg)
    rl_samples = list(read_samples(tmp / "pool-thyme-rl" / "samples" / "shard-00000.parquet").values())
    store = tmp / "pool-thyme-rl" / "images"
    exact = (store / rl_samples[0].images[0].relpath).read_bytes()
    with Image.open(store / rl_samples[1].images[0].relpath) as im:
        reencoded = jpeg(ImageEnhance.Color(im.resize((im.width // 2, im.height // 2))).enhance(1.1), "PNG")
    rows = [{"index": "0", "image": base64.b64encode(exact).decode(), "question": "What colour is it?", "answer": "A",
             "A": "red", "B": "blue", "category": "color"},
            {"index": "1", "image": base64.b64encode(reencoded).decode(), "question": "How many?", "answer": "12"},
            {"index": "2", "image": "0", "question": "Is it large?", "answer": "A", "A": "yes", "B": "no"},
            {"index": "3", "image": base64.b64encode(jpeg(photos[-1].rotate(180))).decode(),
             "question": "What is 3 squared plus one, as asked in the long generic word problem number 3?",
             "answer": "10"}]
    rows += [{"index": str(4 + k), "image": base64.b64encode(jpeg(ImageEnhance.Contrast(photos[k]).enhance(0.3)
                                                               .rotate(90, expand=True))).decode(),
              "question": f"Unrelated benchmark question {k}?", "answer": "B", "A": "x", "B": "y"}
             for k in range(6)]
    fields = ["index", "image", "question", "answer", "A", "B", "category"]
    with open(tmp / "VStar_mini.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        w.writeheader()
        w.writerows([{k: r.get(k, "") for k in fields} for r in rows])
    exact2 = (store / rl_samples[5].images[0].relpath).read_bytes()
    (tmp / "mini_bench.jsonl").write_text(
        json.dumps({"id": "m1", "question": "q?", "image": base64.b64encode(exact2).decode(), "answer": "x"}) + "\n"
        + json.dumps({"id": "m2", "question": "Totally different?", "answer": "y"}) + "\n")
    return str(tmp / "VStar_mini.tsv"), str(tmp / "mini_bench.jsonl")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=None, help="folder of photos (default: generated pictures)")
    parser.add_argument("--out", default=None, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    photos = load_photos(args.photos)
    report = {"photos": {"source": "folder" if args.photos else "generated", "count": len(photos),
                         "sizes": sorted({f"{p.width}x{p.height}" for p in photos})}}
    with tempfile.TemporaryDirectory(prefix="thyme-released-") as name:
        tmp = Path(name)
        report["ingest"] = ingest_all(tmp, photos)
        with Sandbox(workers=2, timeout=10) as sandbox:
            report["sft"] = sft_flow(tmp, sandbox)
            report["audit_without_ground_truth"] = audit_flow(tmp, sandbox, photos)
        for fmt in ("thyme-rl", "deepeyes", "generic"):
            report[f"rl_from_pool:{fmt}"] = rl_flow(tmp, fmt)
        benches = benchmarks_files(tmp, photos)
        cfg = DecontaminationConfig(benchmarks=benches)
        report["decontamination:thyme-rl"] = rl_flow(tmp, "thyme-rl", cfg)
        report["decontamination:generic"] = rl_flow(tmp, "generic", cfg)
    text = json.dumps(report, indent=1, sort_keys=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
