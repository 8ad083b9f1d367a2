"""Human review (THYME.md §3: the paper's last filter is two experts reading each sample): hand a
stratified sample of audited trajectories to reviewers, bring their verdicts back, and measure
how far the audit agrees with them.

    export_review(audited_files, sample_files, store_root, out_dir, ReviewConfig()) -> manifest
    import_verdicts(review_dir, verdict_files, rule="any") -> report

The export folder (written whole, atomically) holds
- `index.html`: one card per item — the question, the ground truth, the input image (the
  ground-truth box drawn on it), each round's
  reasoning, code and sandbox output (images shown, text, errors), the final answer and every
  audit check with its verdict and reason. Static, no server; images are downscaled copies under
  `images/` (relative links), so the folder can be zipped and mailed. Each card has accept /
  reject buttons and a note field; "Download verdicts" saves the filled CSV.
- `verdicts-template.csv`: the same form for a spreadsheet: review_id, trajectory_id, task,
  audit, verdict (accept | reject | unsure), reviewer, note.
- `items.jsonl` (everything about each item, for tools) and `manifest.json` (the selection).
The sample is stratified by task and audit verdict (passed / failed): `per_stratum` items each,
drawn by a seeded hash of the trajectory id, so the same inputs give the same selection.

Import reads filled CSVs (any number, any reviewers; a re-import reads them all again): every line must name an exported item
(review_id and trajectory_id agreeing) and a known verdict; a line that does not is left out and
listed with its file, line and reason (`problems`), the rest import. Two lines of one reviewer
on one item must agree. It writes `verdicts.parquet` (every verdict), `rejected.parquet` (the
trajectory ids the combined verdict rejects; a split's `exclude_ids_file`) and `report.json`:
verdict counts, each reviewer's agreement with the audit (plain and Cohen's kappa, with the
confusion table, overall and per task), agreement between reviewers on items both judged, and
the combined verdict's agreement with the audit. The combined verdict: `any` (the default: one
reject rejects, as two experts who must both accept), `majority`, or `all`.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import polars as pl
import pyarrow as pa
from PIL import Image, ImageDraw

from pipelines.core.atomic import atomic_path, write_json, write_parquet
from pipelines.core.images import store_path
from pipelines.core.schema import Sample
from pipelines.core.trajectory import FAIL, Trajectory, render_result

VERDICTS = ("accept", "reject", "unsure")
RULES = ("any", "majority", "all")
CSV_COLUMNS = ("review_id", "trajectory_id", "task", "audit", "verdict", "reviewer", "note")
VERDICT_SCHEMA = pa.schema([("review_id", pa.string()), ("trajectory_id", pa.string()),
                            ("sample_id", pa.string()), ("task", pa.string()),
                            ("audit_passed", pa.bool_()), ("reviewer", pa.string()),
                            ("verdict", pa.string()), ("note", pa.string()),
                            ("file", pa.string()), ("line", pa.int64())])


class ReviewError(ValueError):
    """An export or import that cannot go on (the message says what to do)."""


@dataclass(frozen=True)
class ReviewConfig:
    per_stratum: int = 20          # items per (task, audit verdict)
    seed: int = 0
    image_side: int = 768          # long side of the copies shown on the page
    overwrite: bool = False        # replace an export whose selection differs (its verdicts die)


def _draw(seed: int, ident: str) -> str:
    return hashlib.blake2b(f"{seed}|{ident}".encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def select(audited_files: list[str], cfg: ReviewConfig) -> list[dict]:
    """The stratified sample: (id, task, passed) rows, `per_stratum` per (task, passed)."""
    index = (pl.scan_parquet(audited_files).select("id", "task", pl.col("passed").fill_null(False))
             .collect().unique("id", keep="first", maintain_order=True))
    rows = sorted(index.to_dicts(), key=lambda r: (r["task"], not r["passed"], _draw(cfg.seed, r["id"])))
    taken: Counter = Counter()
    chosen = []
    for r in rows:
        if taken[r["task"], r["passed"]] < cfg.per_stratum:
            taken[r["task"], r["passed"]] += 1
            chosen.append(r)
    return chosen


def export_review(audited_files: list[str], sample_files: list[str], store_root: str | os.PathLike,
                  out_dir: str | os.PathLike, cfg: ReviewConfig | None = None) -> dict:
    """Write the review folder (see the module docstring); returns its manifest."""
    cfg = cfg or ReviewConfig()
    if not audited_files:
        raise ReviewError("no audited trajectory shards to review")
    chosen = select(audited_files, cfg)
    ids = [r["id"] for r in chosen]
    export_id = hashlib.blake2b("|".join(ids).encode(), digest_size=6).hexdigest()
    out = Path(out_dir)
    old = out / "manifest.json"
    if old.exists() and not cfg.overwrite:
        previous = json.loads(old.read_text())
        if previous["export_id"] != export_id:
            raise ReviewError(f"{out} holds another review export ({previous['export_id']}, "
                              f"{len(previous['items'])} items): verdicts returned for it would "
                              f"no longer match. Export elsewhere, or set overwrite.")
    rows = {r["id"]: r for r in pl.scan_parquet(audited_files).filter(pl.col("id").is_in(ids))
            .collect().unique("id", keep="first").to_dicts()}
    trajectories = [Trajectory.from_row(rows[i]) for i in ids]
    sample_ids = list({t.sample_id for t in trajectories})
    samples = {r["id"]: Sample.from_row(r) for r in pl.scan_parquet(sample_files)
               .filter(pl.col("id").is_in(sample_ids)).collect()
               .unique("id", keep="first").to_dicts()} if sample_files else {}
    items = []
    for k, t in enumerate(trajectories):
        items.append({"review_id": f"{export_id}-{k:04d}", "trajectory_id": t.id,
                      "sample_id": t.sample_id, "task": t.task, "kind": t.kind,
                      "teacher": t.teacher, "audit": "pass" if t.passed else "fail",
                      "failed_checks": [c.name for c in t.audit if c.verdict == FAIL]})
    with atomic_path(out) as tmp:
        (tmp / "images").mkdir(parents=True)
        copies = _ImageCopies(Path(store_root), tmp / "images", cfg.image_side)
        cards = [_card(item, t, samples.get(t.sample_id), copies) for item, t in
                 zip(items, trajectories, strict=True)]
        strata = Counter(f"{i['task']} / {i['audit']}" for i in items)
        (tmp / "index.html").write_text(_page(export_id, cards, strata), encoding="utf-8")
        with open(tmp / "verdicts-template.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for i in items:
                writer.writerow([i["review_id"], i["trajectory_id"], i["task"], i["audit"], "", "", ""])
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for item, t in zip(items, trajectories, strict=True):
                f.write(json.dumps({**item, "trajectory": t.to_row(),
                                    "sample": samples[t.sample_id].to_row() if t.sample_id in samples
                                    else None}, ensure_ascii=False) + "\n")
        manifest = {"export_id": export_id, "config": asdict(cfg), "items": items,
                    "strata": dict(strata), "missing_samples": sum(i["sample_id"] not in samples
                                                                   for i in items)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


class _ImageCopies:
    """Downscaled JPEG copies of store images inside the export, one per image (and box): the
    ground-truth box, when given, drawn on the copy so a reviewer sees what the audit judged."""

    def __init__(self, root: Path, folder: Path, side: int):
        self.root, self.folder, self.side = root, folder, side

    def __call__(self, relpath: str, box=None) -> str | None:
        name = Path(relpath).stem + ("-box" if box else "") + ".jpg"
        target = self.folder / name
        if not target.exists():
            try:
                with Image.open(store_path(self.root, relpath)) as im:
                    image = im.convert("RGB")
                scale = min(1.0, self.side / max(image.size))
                image.thumbnail((self.side, self.side))
                if box:
                    width = max(2, round(3 * scale))
                    ImageDraw.Draw(image).rectangle([v * scale for v in box], outline=(255, 0, 0),
                                                    width=width)
                image.save(target, quality=88)
            except (OSError, ValueError, TypeError):
                return None
        return f"images/{name}"


def _img(src: str | None, caption: str) -> str:
    if src is None:
        return f'<div class="missing">{html.escape(caption)}: image missing</div>'
    return (f'<figure><a href="{src}"><img src="{src}" loading="lazy"></a>'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


def _card(item: dict, t: Trajectory, sample: Sample | None, copy) -> str:
    e = html.escape
    parts = [f'<section class="card {item["audit"]}" id="{item["review_id"]}" '
             f'data-id="{item["review_id"]}" data-trajectory="{item["trajectory_id"]}" '
             f'data-task="{e(item["task"])}" data-audit="{item["audit"]}">',
             f'<h2>{item["review_id"]} · {e(t.task)} / {e(t.kind)} · audit: '
             f'<b>{item["audit"]}</b></h2>']
    if sample is None:
        parts.append('<p class="missing">the pool sample is missing</p>')
    else:
        parts.append(f'<p class="q">{e(sample.question)}</p>')
        truth = {k: v for k, v in (sample.meta or {}).items()
                 if k in ("box", "angle", "category", "difficulty", "target", "augmentation")}
        parts.append(f'<p>ground truth: <b>{e(sample.answer or "(none)")}</b> '
                     f'<code>{e(json.dumps(truth, ensure_ascii=False))}</code></p>')
        box = (sample.meta or {}).get("box")
        parts += [_img(copy(ref.relpath, box if k == 0 else None), f"input {ref.width}x{ref.height}"
                       + (" (red: the ground-truth box)" if box and k == 0 else ""))
                  for k, ref in enumerate(sample.images)]
    parts.append('<ol class="turns">')
    for turn in t.turns:
        parts.append(f"<li><pre class=reasoning>{e(turn.reasoning.strip())}</pre>")
        if turn.code is not None:
            parts.append(f"<pre class=code>{e(turn.code)}</pre>")
            if turn.result is None:
                parts.append('<p class="missing">not executed</p>')
            elif turn.result.kind == "image":
                parts += [_img(copy(p), "sandbox output") for p in turn.result.images]
            else:
                parts.append(f"<pre class=out>{e(render_result(turn.result)[:3000])}</pre>")
        parts.append("</li>")
    parts.append(f'</ol><p>final answer: <b>{e(t.answer)}</b></p><table class="checks">')
    for c in t.audit:
        parts.append(f'<tr class="{c.verdict}"><td>{e(c.name)}</td><td>{c.verdict}</td>'
                     f'<td>{e(c.reason)}</td></tr>')
    parts.append("</table><div class=verdict>"
                 + "".join(f'<label><input type=radio name="v-{item["review_id"]}" value="{v}">{v}'
                           f"</label>" for v in VERDICTS)
                 + f' <input class=note placeholder="note" name="n-{item["review_id"]}"></div>'
                 "</section>")
    return "\n".join(parts)


_STYLE = """body{font:14px sans-serif;max-width:1100px;margin:auto}.card{border:1px solid #999;
margin:1em 0;padding:.5em 1em}.card.fail{border-color:#c33}img{max-width:480px;max-height:480px}
figure{display:inline-block;margin:.3em}pre{white-space:pre-wrap;background:#f6f6f6;padding:.4em}
pre.code{background:#eef}pre.out{background:#efe}tr.fail td{color:#c33}tr.skip td{color:#888}
td{padding:0 .5em;vertical-align:top}.missing{color:#c33}.verdict{margin:.5em 0;font-size:16px}"""

_SCRIPT = """function download(){const who=document.getElementById('reviewer').value.trim();
if(!who){alert('Enter your name first');return}const q=s=>'"'+String(s).replace(/"/g,'""')+'"';
const rows=['review_id,trajectory_id,task,audit,verdict,reviewer,note'];
for(const c of document.querySelectorAll('.card')){const id=c.dataset.id;
const v=c.querySelector('input[name="v-'+id+'"]:checked');const n=c.querySelector('.note').value;
rows.push([id,c.dataset.trajectory,c.dataset.task,c.dataset.audit,v?v.value:'',who,n].map(q).join(','))}
const a=document.createElement('a');a.href=URL.createObjectURL(new Blob([rows.join('\\n')+'\\n'],
{type:'text/csv'}));a.download='verdicts-'+who.replace(/\\W+/g,'_')+'.csv';a.click()}"""


def _page(export_id: str, cards: list[str], strata: Counter) -> str:
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(strata.items()))
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Thyme review {export_id}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
            f"<h1>Review {export_id}</h1><p>{len(cards)} trajectories ({html.escape(summary)}). "
            "For each: does the code's result support the reasoning and help answer, and is the "
            "answer right? Choose accept, reject or unsure; a note says why.</p>"
            "<p>Your name: <input id=reviewer> <button onclick=download()>Download verdicts"
            "</button> (or fill verdicts-template.csv in a spreadsheet)</p>"
            + "\n".join(cards) + "</body></html>")


# ---------------------------------------------------------------------------------------------
# Import and agreement
# ---------------------------------------------------------------------------------------------

def read_verdict_files(review_dir: str | os.PathLike, files: list[str | os.PathLike],
                       reviewer: str | None = None) -> tuple[list[dict], list[dict]]:
    """(verdict rows, problems): every usable line of the filled CSVs, and each line left out
    with its file, line and reason. `reviewer` names the reviewer of lines that leave it empty."""
    manifest = json.loads((Path(review_dir) / "manifest.json").read_text())
    items = {i["review_id"]: i for i in manifest["items"]}
    rows, problems, seen = [], [], {}
    for file in files:
        name = os.path.basename(file)
        try:
            text = Path(file).read_text(encoding="utf-8-sig")   # spreadsheets add a BOM
        except (OSError, UnicodeDecodeError) as exc:
            problems.append({"file": name, "line": None, "reason": f"unreadable: {exc}"})
            continue
        reader = csv.DictReader(io.StringIO(text))
        missing = {"review_id", "verdict"} - set(reader.fieldnames or ())
        if missing:
            problems.append({"file": name, "line": 1, "reason": f"missing columns {sorted(missing)}"})
            continue
        for line, raw in enumerate(reader, start=2):
            row = {k: (v or "").strip() for k, v in raw.items() if k}
            why, item = _line_problem(row, items, reviewer)
            if why == "blank":
                continue
            if why:
                problems.append({"file": name, "line": line, "reason": why})
                continue
            who = row.get("reviewer") or reviewer
            verdict = row["verdict"].lower()
            key = (who, item["review_id"])
            if key in seen:
                if seen[key] != verdict:
                    problems.append({"file": name, "line": line, "reason": f"{who} already gave "
                                     f"{item['review_id']} the verdict {seen[key]!r}, here {verdict!r}"})
                continue
            seen[key] = verdict
            rows.append({"review_id": item["review_id"], "trajectory_id": item["trajectory_id"],
                         "sample_id": item["sample_id"], "task": item["task"],
                         "audit_passed": item["audit"] == "pass", "reviewer": who,
                         "verdict": verdict, "note": row.get("note", ""), "file": name, "line": line})
    return rows, problems


def _line_problem(row: dict, items: dict, reviewer: str | None) -> tuple[str, dict | None]:
    if not row.get("verdict"):
        return "blank", None                      # not reviewed (yet): not a problem
    item = items.get(row.get("review_id", ""))
    if item is None:
        return f"review_id {row.get('review_id')!r} is not in this export", None
    if row.get("trajectory_id") and row["trajectory_id"] != item["trajectory_id"]:
        return (f"trajectory_id {row['trajectory_id']!r} does not belong to "
                f"{item['review_id']} ({item['trajectory_id']})"), None
    if row["verdict"].lower() not in VERDICTS:
        return f"verdict {row['verdict']!r} is not one of {', '.join(VERDICTS)}", None
    if not (row.get("reviewer") or reviewer):
        return "no reviewer named (a reviewer column, or give one for the file)", None
    return "", item


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two yes/no raters; None when undefined (no pairs, or both raters
    constant and equal: chance agreement is total)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    pa_, pb = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    expected = pa_ * pb + (1 - pa_) * (1 - pb)
    if expected >= 1.0:
        return None
    return round((observed - expected) / (1 - expected), 4)


def agreement(pairs: list[tuple[bool, bool]]) -> dict:
    """n, plain agreement, kappa and the confusion table of (first, second) yes/no pairs."""
    table = Counter(f"{'pass' if a else 'fail'}/{'accept' if b else 'reject'}" for a, b in pairs)
    return {"n": len(pairs), "agreement": round(sum(a == b for a, b in pairs) / len(pairs), 4)
            if pairs else None, "kappa": cohen_kappa(pairs), "table": dict(sorted(table.items()))}


def combine(verdicts: list[str], rule: str) -> str | None:
    """The combined verdict of one item's decided verdicts (accept/reject), None if none."""
    decided = [v for v in verdicts if v != "unsure"]
    if not decided:
        return None
    rejects = decided.count("reject")
    if rule == "any":
        return "reject" if rejects else "accept"
    if rule == "all":
        return "reject" if rejects == len(decided) else "accept"
    return "reject" if rejects * 2 > len(decided) else "accept"


def import_verdicts(review_dir: str | os.PathLike, files: list[str | os.PathLike],
                    rule: str = "any", reviewer: str | None = None,
                    out_dir: str | os.PathLike | None = None) -> dict:
    """Read the filled CSVs, write verdicts.parquet, rejected.parquet and report.json into
    `out_dir` (default: `review_dir`; each file atomically), and return the report (see the
    module docstring)."""
    if rule not in RULES:
        raise ReviewError(f"rule must be one of {RULES} (got {rule!r})")
    review_dir = Path(review_dir)
    if not (review_dir / "manifest.json").exists():
        raise ReviewError(f"{review_dir} is not a review export (no manifest.json)")
    rows, problems = read_verdict_files(review_dir, files, reviewer)
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_item[r["review_id"]].append(r)
    audit_of = {i: rs[0]["audit_passed"] for i, rs in by_item.items()}
    combined = {i: combine([r["verdict"] for r in rs], rule) for i, rs in by_item.items()}
    rejected = sorted({by_item[i][0]["trajectory_id"] for i, v in combined.items() if v == "reject"})
    reviewers = sorted({r["reviewer"] for r in rows})
    decided = [r for r in rows if r["verdict"] != "unsure"]
    report = {
        "files": [os.path.basename(f) for f in files], "rule": rule, "lines_imported": len(rows),
        "problems": problems, "items_reviewed": len(by_item),
        "verdicts": dict(Counter(r["verdict"] for r in rows)),
        "combined": dict(Counter(v or "undecided" for v in combined.values())),
        "rejected_trajectories": len(rejected),
        "audit_vs_reviewer": {who: _vs_audit([r for r in decided if r["reviewer"] == who])
                              for who in reviewers},
        "audit_vs_combined": _vs_audit([{"audit_passed": audit_of[i], "verdict": v,
                                         "task": by_item[i][0]["task"]}
                                        for i, v in combined.items() if v is not None]),
        "between_reviewers": _between(decided, reviewers),
    }
    out = Path(out_dir) if out_dir is not None else review_dir
    write_parquet(pa.Table.from_pylist(rows, schema=VERDICT_SCHEMA), out / "verdicts.parquet")
    write_parquet(pa.table({"id": pa.array(rejected, pa.string())}), out / "rejected.parquet")
    write_json(out / "report.json", report)
    return report


def _vs_audit(rows: list[dict]) -> dict:
    """The audit's verdict against a reviewer's (accept/reject), overall and per task; with
    the share of audit-passed items the reviewer accepted (the audit's precision)."""
    pairs = [(r["audit_passed"], r["verdict"] == "accept") for r in rows]
    out = agreement(pairs)
    passed = [b for a, b in pairs if a]
    out["accepted_of_audit_passed"] = round(sum(passed) / len(passed), 4) if passed else None
    by_task: dict[str, list] = defaultdict(list)
    for r, pair in zip(rows, pairs, strict=True):
        by_task[r["task"]].append(pair)
    out["by_task"] = {task: agreement(p) for task, p in sorted(by_task.items())}
    return out


def _between(rows: list[dict], reviewers: list[str]) -> dict:
    """Agreement of every pair of reviewers on the items both decided."""
    verdict = {(r["reviewer"], r["review_id"]): r["verdict"] == "accept" for r in rows}
    out = {}
    for a, b in combinations(reviewers, 2):
        common = sorted({i for w, i in verdict if w == a} & {i for w, i in verdict if w == b})
        pairs = [(verdict[a, i], verdict[b, i]) for i in common]
        stats = agreement(pairs)
        stats.pop("table")
        out[f"{a} / {b}"] = stats
    return out
