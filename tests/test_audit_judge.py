"""The audit's optional VLM judge (pipelines.samples.audit.audit_many with pipelines.core.judge.Judge) against
a loopback OpenAI-compatible server: who is asked, what they are shown, the cache, the budget,
failures, samples without ground truth, and the Dagster asset's metadata."""

from __future__ import annotations

import base64
import io
import re

import pytest
from fake_openai import FakeOpenAI
from PIL import Image

from pipelines.core.images import ImageStore
from pipelines.core.judge import Judge
from pipelines.core.llm import LLMClient, LLMConfig
from pipelines.core.schema import Sample
from pipelines.core.trajectory import FAIL, PASS, SKIP, UNVERIFIED, Result, Trajectory, Turn
from pipelines.pool.generate import generate_samples
from pipelines.samples.audit import CHECKS, JUDGE, AuditConfig, audit, audit_many


def _texts(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def _images(body: dict) -> list[bytes]:
    content = body["messages"][-1]["content"]
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
            for p in content if p["type"] == "image_url"]


def judge_reply(body: dict) -> str:
    """A stand-in VLM: rejects reasoning marked MISLEADING, mumbles at MUMBLE, else agrees."""
    text = _texts(body)
    return "No." if "MISLEADING" in text else "maybe" if "MUMBLE" in text else "Yes."


@pytest.fixture(scope="module")
def server():
    fake = FakeOpenAI(reply=judge_reply, delay=0.2)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """(store root, samples by task) for the first 12 generated samples of seed 0."""
    root = tmp_path_factory.mktemp("judge-store")
    by_task: dict[str, list[Sample]] = {}
    for s in generate_samples(0, 12, 0, ImageStore(root)):
        by_task.setdefault(s.task, []).append(s)
    return root, by_task


def _judge(server, cache_dir, max_calls=None) -> Judge:
    return Judge(LLMClient(LLMConfig(base_url=server.url, model="fake-vlm", api_key_env=None,
                                     cache_dir=str(cache_dir), max_retries=0, timeout_s=10,
                                     max_concurrency=4)), max_calls)


def _crop(root, sample: Sample, name: str, box=None) -> str:
    """A 2x zoom of the box with a margin (or of `box`), saved under the store; its path."""
    x1, y1, x2, y2 = box or sample.meta["box"]
    m = max(x2 - x1, y2 - y1) // 2
    with Image.open(root / sample.images[0].relpath) as im:
        c = im.convert("RGB").crop((max(0, x1 - m), max(0, y1 - m), min(im.width, x2 + m),
                                    min(im.height, y2 + m)))
    rel = f"produced/{name}.png"
    (root / "produced").mkdir(exist_ok=True)
    c.resize((c.width * 2, c.height * 2)).save(root / rel)
    return rel


def _traj(sample: Sample, result: Result, reasoning="I zoom in on the label.", answer=None,
          kind="single") -> Trajectory:
    return Trajectory(sample_id=sample.id, teacher="test", kind=kind, task=sample.task,
                      turns=[Turn(reasoning, "crop = img.crop(box)\ncrop.save(out)", result),
                             Turn("The label reads clearly now.")],
                      answer=sample.answer if answer is None else answer)


def _check(t: Trajectory):
    assert [c.name for c in t.audit] == [*CHECKS, JUDGE]
    return t.audit[-1]


@pytest.fixture(scope="module")
def cases(pool):
    """Four crop trajectories: good, good-but-misleading, a crop that misses the box (a rule
    fails), a direct answer; and the samples by id."""
    root, by_task = pool
    s, s2 = by_task["crop"][:2]
    good = _traj(s, Result("image", "saved", [_crop(root, s, "good")]))
    misleading = _traj(s2, Result("image", "", [_crop(root, s2, "misleading")]),
                       reasoning="MISLEADING: the crop shows a different label.")
    x1, y1, x2, y2 = s.meta["box"]
    far = (0, 0, 120, 120) if x1 > 400 or y1 > 400 else (s.images[0].width - 120, s.images[0].height - 120,
                                                          s.images[0].width, s.images[0].height)
    miss = _traj(s, Result("image", "", [_crop(root, s, "miss", far)]), reasoning="I look elsewhere.")
    direct = Trajectory(sample_id=s.id, teacher="test", kind="direct", task=s.task,
                        turns=[Turn("A glance is enough.")], answer=s.answer)
    return [good, misleading, miss, direct], {x.id: x for x in (s, s2)}


def test_the_judge_decides_only_what_the_rules_passed(server, pool, cases, tmp_path):
    root, _ = pool
    trajectories, samples = cases
    before = server.requests
    assert [c.name for c in audit(trajectories[0], samples[trajectories[0].sample_id], root).audit] == list(CHECKS)
    judge = _judge(server, tmp_path / "cache")
    good, misleading, miss, direct = audit_many(trajectories, samples, root, judge=judge)
    assert server.requests - before == 2                       # only the two that passed the rules
    assert server.max_inflight >= 2                            # asked together, not one by one
    assert _check(good).verdict == PASS and good.passed and "fake-vlm" in _check(good).reason
    assert _check(misleading).verdict == FAIL and misleading.passed is False
    assert _check(miss).verdict == SKIP and "crop_semantics failed" in _check(miss).reason
    assert _check(direct).verdict == SKIP and "direct answer" in _check(direct).reason
    assert judge.stats.as_dict() == {"calls": 2, "cache_hits": 0, "failures": 0, "over_budget": 0}

    # What the judge saw: our prompt, the question, code, printed text, answer, and the images.
    body = next(b for b in server.bodies[before:] if "MISLEADING" not in _texts(b))
    text = _texts(body)
    s = samples[good.sample_id]
    for part in (s.question, "crop = img.crop(box)", "printed:\nsaved", f"Final answer: {s.answer}",
                 "support the reasoning and help answer"):
        assert part in text
    assert body["temperature"] == 0.0
    inp, out = _images(body)
    assert (root / good.turns[0].result.images[0]).read_bytes() == out      # sent as produced
    with Image.open(io.BytesIO(inp)) as im:                                  # large input: reduced
        assert max(im.size) == 1024 and max(s.images[0].width, s.images[0].height) > 1024


def test_the_cache_makes_a_rerun_free_and_over_budget_is_unverified(server, pool, cases, tmp_path):
    root, _ = pool
    trajectories, samples = cases
    first = audit_many(trajectories, samples, root, judge=_judge(server, tmp_path / "cache"))
    before = server.requests
    # a fresh judge with no budget at all: answers in the cache are free
    again = _judge(server, tmp_path / "cache", max_calls=0)
    rerun = audit_many(trajectories, samples, root, judge=again)
    assert server.requests == before
    assert [t.audit for t in rerun] == [t.audit for t in first]
    assert again.stats.cache_hits == 2 and again.stats.over_budget == 0
    # a budget of one request for two new questions (asked one per batch): one verdict, one
    # unverified saying why; unverified is kept apart from passed, and passes only when allowed
    tight = _judge(server, tmp_path / "other-cache", max_calls=1)
    good, misleading, *_ = audit_many(trajectories, samples, root, AuditConfig(judge_batch=1), tight)
    assert server.requests == before + 1
    assert _check(good).verdict == PASS
    assert _check(misleading).verdict == UNVERIFIED and "over budget" in _check(misleading).reason
    assert not misleading.passed      # not verified: not passed (the default)
    assert tight.stats.over_budget == 1 and tight.stats.calls == 1
    lenient = AuditConfig(judge_batch=1, judge_unverified_passes=True)
    _, misleading, *_ = audit_many(trajectories, samples, root, lenient,
                                   _judge(server, tmp_path / "third-cache", max_calls=0))
    assert _check(misleading).verdict == UNVERIFIED and misleading.passed


def test_a_failed_request_or_an_unreadable_reply_is_unverified_with_the_reason(server, pool, cases, tmp_path):
    root, _ = pool
    trajectories, samples = cases
    good = trajectories[0]
    judge = _judge(server, tmp_path / "cache")
    server.script += ["500"]
    t = audit_many([good], samples, root, judge=judge)[0]
    assert _check(t).verdict == UNVERIFIED and re.search(r"request failed: .*HTTP 500", _check(t).reason)
    assert not t.passed
    mumbled = _traj(samples[good.sample_id], good.turns[0].result, reasoning="MUMBLE")
    t = audit_many([mumbled], samples, root, judge=judge)[0]
    assert _check(t).verdict == UNVERIFIED and "not a yes/no reply: 'maybe'" in _check(t).reason
    assert judge.stats.failures == 2 and len(judge.stats.errors) == 2
    # the failure was not cached: asking again gets a verdict
    t = audit_many([good], samples, root, judge=judge)[0]
    assert _check(t).verdict == PASS


def test_without_ground_truth_the_rules_skip_and_the_judge_decides(server, pool, tmp_path):
    root, by_task = pool
    gen = by_task["crop"][0]
    real = Sample(question="What does the small sign say?", images=gen.images, source="real",
                  origin_file="r.parquet", origin_row=3, answer="", task="crop", meta={})
    crop = Result("image", "", [_crop(root, gen, "nogt")])
    judge = _judge(server, tmp_path / "cache")
    ok, bad = audit_many([_traj(real, crop, answer="STOP"),
                          _traj(real, crop, reasoning="MISLEADING", answer="STOP")],
                         {real.id: real}, root, judge=judge)
    verdicts = {c.name: c for c in ok.audit}
    assert verdicts["crop_semantics"].verdict == PASS and "no ground-truth box" in verdicts["crop_semantics"].reason
    assert verdicts["answer"].verdict == SKIP and "ground-truth answer" in verdicts["answer"].reason
    assert verdicts["executed"].verdict == PASS and verdicts["image_sanity"].verdict == PASS
    assert _check(ok).verdict == PASS and ok.passed
    assert _check(bad).verdict == FAIL and not bad.passed       # the judge decided


def _judge_verdicts(meta: dict) -> dict:
    """The judge check's verdict counts from the audited asset's funnel table."""
    (row,) = [r.data for r in meta["funnel"].records if r.data["stage"] == f"after {JUDGE}"]
    counted = {FAIL: row["failed"], UNVERIFIED: row["unverified"], SKIP: row["skipped"]}
    return {PASS: meta["dagster/row_count"] - sum(counted.values()), **counted}


@pytest.mark.slow
def test_the_audited_asset_reports_the_judge(server, tmp_path):
    from dagster import AssetKey, DagsterInstance, materialize

    from assets.code_samples import audited, code_samples, executions
    from assets.pool import source_manifest, source_pool
    from assets.resources import (
        ClusterResource,
        JudgeResource,
        SandboxResource,
        TeacherResource,
        ThymeStorage,
    )

    instance = DagsterInstance.ephemeral()
    judge = JudgeResource(enabled=True, base_url=server.url, model="fake-vlm",
                          api_key_env="THYME_TEST_NO_KEY", max_calls=5)
    resources = {"storage": ThymeStorage(root=str(tmp_path / "data")),
                 "sandbox": SandboxResource(workers=2), "teacher": TeacherResource(), "judge": judge,
                 "cluster": ClusterResource()}
    manifest = {"ops": {"pool__source_manifest": {"config": {"count": 20, "shard_size": 20, "workers": 1}}}}
    assert materialize([source_manifest], instance=instance, resources=resources, run_config=manifest).success
    before = server.requests
    result = materialize([source_manifest, source_pool, code_samples, executions, audited],
                         instance=instance, resources=resources, partition_key="shard-00000",
                         selection=[AssetKey(["pool", "source_pool"]), AssetKey(["samples", "code_samples"]),
                                    AssetKey(["samples", "executions"]), AssetKey(["samples", "audited"])])
    assert result.success
    (mat,) = list(result.asset_materializations_for_node("samples__audited"))
    meta = {k: v.value for k, v in mat.metadata.items()}
    funnel = _judge_verdicts(meta)
    assert meta["judge_calls"] == 5 == server.requests - before == funnel[PASS]
    assert meta["judge_failures"] == 0 and meta["judge_cache_hits"] == 0
    assert meta["judge_over_budget"] > 0
    assert sum(funnel.values()) == meta["dagster/row_count"]
    # the rest: direct answers (not asked: SKIP) and the questions over budget (UNVERIFIED)
    assert funnel[UNVERIFIED] == meta["judge_over_budget"]
    assert funnel[SKIP] + funnel[UNVERIFIED] == meta["dagster/row_count"] - 5
    # The setting lets unverified rows pass. The same shard again: the first 5 answers are cached,
    # a fresh budget asks 5 more (yes), the 4 left unverified now pass too: 9 more passes in all.
    lenient = materialize([source_manifest, source_pool, code_samples, executions, audited],
                          instance=instance, resources=resources, partition_key="shard-00000",
                          selection=[AssetKey(["samples", "audited"])],
                          run_config={"ops": {"samples__audited": {"config": {"judge_unverified_passes": True}}}})
    (again,) = list(lenient.asset_materializations_for_node("samples__audited"))
    again_meta = {k: v.value for k, v in again.metadata.items()}
    assert _judge_verdicts(again_meta)[UNVERIFIED] == funnel[UNVERIFIED] - 5 > 0
    assert again.metadata["passed"].value == meta["passed"] + funnel[UNVERIFIED]
