"""Human review: a stratified sample of audited trajectories exported as a static page and a
spreadsheet form (real photographs as inputs), verdicts imported and validated, reviewer
agreement with the audit and between reviewers, and a split that leaves rejected rows out."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from real_photos import PHOTOS, photo

from pipelines.core.images import ImageStore
from pipelines.core.schema import Sample, samples_table
from pipelines.core.trajectory import (
    FAIL,
    PASS,
    Check,
    Result,
    Trajectory,
    Turn,
    trajectories_table,
)
from pipelines.datasets.splits import SplitConfig, build_splits
from pipelines.samples.review import (
    ReviewConfig,
    ReviewError,
    cohen_kappa,
    export_review,
    import_verdicts,
)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Audited trajectories on real photos: per photo a crop trajectory that passed and one
    that failed the crop check, and a rotate one that passed (one shard file)."""
    root = tmp_path_factory.mktemp("review")
    store = ImageStore(root / "images")
    samples, trajectories = [], []
    for k, name in enumerate(("astronaut", "coffee", "rocket", "chelsea")):
        question, answer, box, category, _ = PHOTOS[name]
        image = photo(name)

        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        ref, _ = store.put(buf.getvalue())
        crop = io.BytesIO()
        image.crop(box).resize(((box[2] - box[0]) * 2, (box[3] - box[1]) * 2)).save(crop, format="PNG")
        produced, _ = store.put(crop.getvalue())
        sample = Sample(question=question + " <b>&</b>", images=[ref], source="photos",
                        origin_file="p", origin_row=k, answer=answer, task="crop",
                        meta={"box": box, "category": category})
        samples.append(sample)
        for passed, teacher in ((True, "t/a"), (False, "t/b")):
            turns = [Turn("I zoom in.", "print('x')", Result("image", images=[produced.relpath])),
                     Turn("Now it is clear.")]
            checks = [Check("executed", PASS, "ran"),
                      Check("crop_semantics", PASS if passed else FAIL,
                            "holds 100% of the box" if passed else "the crop misses the box")]
            trajectories.append(Trajectory(sample.id, teacher, "single", "crop", turns, answer,
                                           checks, passed))
        trajectories.append(Trajectory(sample.id, "t/r", "single", "rotate",
                                       [Turn("It is upright now.")], answer,
                                       [Check("executed", PASS, "")], True))
    (root / "audited").mkdir()
    (root / "samples").mkdir()
    pq.write_table(trajectories_table(trajectories), root / "audited" / "shard-00000.parquet")
    pq.write_table(samples_table(samples), root / "samples" / "shard-00000.parquet")
    return root, store, trajectories


def files(root):
    return ([str(root / "audited" / "shard-00000.parquet")], [str(root / "samples" / "shard-00000.parquet")])


def test_export_is_stratified_static_and_repeatable(audited, tmp_path):
    root, store, trajectories = audited
    out = tmp_path / "review"
    manifest = export_review(*files(root), store.root, out, ReviewConfig(per_stratum=2, seed=1))
    assert manifest["strata"] == {"crop / pass": 2, "crop / fail": 2, "rotate / pass": 2}
    assert manifest["missing_samples"] == 0
    page = (out / "index.html").read_text()
    assert page.count('class="card') == 6
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in page and "<b>&</b>" not in page     # escaped
    for src in set(part.split('"')[0] for part in page.split('<img src="')[1:]):
        assert (out / src).is_file() and src.startswith("images/")            # relative, shipped
    assert "the crop misses the box" in page and "Download verdicts" in page
    assert page.count("red: the ground-truth box") == 6                  # drawn on each input
    with open(out / "verdicts-template.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["review_id"] for r in rows] == [i["review_id"] for i in manifest["items"]]
    assert all(r["verdict"] == "" for r in rows)
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert items[0]["trajectory"]["id"] == manifest["items"][0]["trajectory_id"]
    again = export_review(*files(root), store.root, out, ReviewConfig(per_stratum=2, seed=1))
    assert again["export_id"] == manifest["export_id"]                       # same selection
    with pytest.raises(ReviewError, match="another review export"):
        export_review(*files(root), store.root, out, ReviewConfig(per_stratum=1, seed=1))
    assert json.loads((out / "manifest.json").read_text())["export_id"] == manifest["export_id"]


def fill(out, name, reviewer, verdicts, extra=()):
    """A filled copy of the template: verdicts[k] for the k-th item ('' leaves it blank)."""
    with open(out / "verdicts-template.csv") as f:
        rows = list(csv.DictReader(f))
    for row, verdict in zip(rows, verdicts, strict=False):
        row["verdict"], row["reviewer"] = verdict, reviewer
    path = out.parent / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + list(extra))
    return path


def test_verdicts_import_with_agreement_and_problems_reported(audited, tmp_path):
    root, store, _ = audited
    out = tmp_path / "review"
    manifest = export_review(*files(root), store.root, out, ReviewConfig(per_stratum=2))
    audit = [i["audit"] == "pass" for i in manifest["items"]]
    assert audit == [True, True, False, False, True, True]        # crop pass, crop fail, rotate
    first = manifest["items"][0]
    alice = fill(out, "alice.csv", "alice", ["accept", "reject", "reject", "reject", "accept", "unsure"],
                 extra=[{"review_id": "nope-0001", "verdict": "accept", "reviewer": "alice"},
                        {"review_id": first["review_id"], "trajectory_id": "0000", "verdict": "accept",
                         "reviewer": "alice"},
                        {"review_id": first["review_id"], "verdict": "maybe", "reviewer": "alice"},
                        {"review_id": first["review_id"], "verdict": "REJECT", "reviewer": "alice"}])
    bob = fill(out, "bob.csv", "bob", ["accept", "accept", "reject", "accept", "accept", ""])
    report = import_verdicts(out, [alice, bob])
    reasons = [(p["file"], p["line"], p["reason"].split(" ")[0]) for p in report["problems"]]
    assert reasons == [("alice.csv", 8, "review_id"), ("alice.csv", 9, "trajectory_id"),
                       ("alice.csv", 10, "verdict"), ("alice.csv", 11, "alice")]
    assert "already gave" in report["problems"][3]["reason"]
    assert report["lines_imported"] == 11 and report["items_reviewed"] == 6
    assert report["verdicts"] == {"accept": 6, "reject": 4, "unsure": 1}
    # alice against the audit: pairs (audit, accept) on her 5 decided items
    a = report["audit_vs_reviewer"]["alice"]
    assert a["n"] == 5 and a["agreement"] == 0.8
    assert a["kappa"] == cohen_kappa([(True, True), (True, False), (False, False), (False, False),
                                      (True, True)])
    assert a["table"] == {"fail/reject": 2, "pass/accept": 2, "pass/reject": 1}
    assert a["accepted_of_audit_passed"] == pytest.approx(2 / 3, abs=1e-4)
    assert set(a["by_task"]) == {"crop", "rotate"}
    between = report["between_reviewers"]["alice / bob"]
    assert between["n"] == 5 and between["agreement"] == 0.6
    # any reviewer's reject rejects: items 1, 2, 3 (0-based); item 5 is undecided (unsure, blank)
    assert report["combined"] == {"accept": 2, "reject": 3, "undecided": 1}
    rejected = pq.read_table(out / "rejected.parquet")["id"].to_pylist()
    assert rejected == sorted(manifest["items"][k]["trajectory_id"] for k in (1, 2, 3))
    assert pq.read_table(out / "verdicts.parquet").num_rows == 11
    majority = import_verdicts(out, [alice, bob], rule="majority")
    assert majority["combined"] == {"accept": 4, "reject": 1, "undecided": 1}   # a tie accepts


def test_kappa():
    assert cohen_kappa([(True, True), (True, False), (False, False), (True, True)]) == 0.5
    assert cohen_kappa([(True, True), (False, False)]) == 1.0
    assert cohen_kappa([(True, True)] * 3) is None                 # no variation: undefined
    assert cohen_kappa([]) is None


def test_a_split_leaves_review_rejections_out(audited, tmp_path):
    root, store, trajectories = audited
    out = tmp_path / "review"
    manifest = export_review(*files(root), store.root, out, ReviewConfig(per_stratum=4))
    first_sample = trajectories[0].sample_id          # both its passing trajectories rejected
    bad = {i["trajectory_id"] for i in manifest["items"]
           if i["sample_id"] == first_sample and i["audit"] == "pass"}
    bob = fill(out, "bob.csv", "bob", ["reject" if i["trajectory_id"] in bad else "accept"
                                       for i in manifest["items"]])
    report = import_verdicts(out, [bob])
    assert report["rejected_trajectories"] == 2 == len(bad)
    cfg = dict(mix={}, test_share=0.0, rl_share=0.0, near_dup_threshold=1.0)
    plain = build_splits(*files(root), tmp_path / "plain", SplitConfig(**cfg))
    reviewed = build_splits(*files(root), tmp_path / "reviewed",
                            SplitConfig(**cfg, exclude_ids_file=str(out / "rejected.parquet")))
    assert reviewed["dropped"]["review_rejected"] == 2 and "review_rejected" not in plain["dropped"]
    kept = pq.read_table(tmp_path / "reviewed" / "wo_thinking_thyme_single_round" / "train.parquet")
    assert not set(kept["id"].to_pylist()) & bad
    assert first_sample not in kept["sample_id"].to_pylist()
    assert plain["rows"]["wo_thinking_thyme_single_round"]["train"] == kept.num_rows + 1


def test_import_refuses_what_is_not_an_export(tmp_path):
    with pytest.raises(ReviewError, match="not a review export"):
        import_verdicts(tmp_path, [])
    with pytest.raises(ReviewError, match="rule"):
        import_verdicts(tmp_path, [], rule="some")
