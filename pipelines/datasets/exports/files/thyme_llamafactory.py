"""Train LLaMA-Factory on a Thyme export with the Thyme protocol kept token for token.

    python thyme_llamafactory.py train.yaml                              # one process
    torchrun --nproc_per_node 8 thyme_llamafactory.py train.yaml         # several GPUs

Shipped with the export. Importing it registers the `thyme_qwen2_vl` template (Qwen2-VL and
Qwen2.5-VL models): LLaMA-Factory's `qwen2_vl` template, except that an assistant piece and an
observation (a sandbox output) are written back to back inside ONE assistant turn, and only the
final assistant piece is followed by `<|im_end|>`. LLaMA-Factory labels the assistant pieces and
never the observations, so the model's own writing is the only labelled text while the token
sequence is the Thyme protocol (the sandbox output inline in the assistant turn). Run as a script
it trains like `llamafactory-cli train` (which cannot see templates registered outside its
process). Tested with llamafactory 0.9.5.
"""

from llamafactory.data.formatter import StringFormatter
from llamafactory.data.mm_plugin import get_mm_plugin
from llamafactory.data.template import TEMPLATES, Template, register_template

NAME = "thyme_qwen2_vl"
END_OF_TURN = "<|im_end|>"


class InlineObservationTemplate(Template):
    """One assistant turn for the whole conversation after the user's question: the turn's end
    token follows the final assistant piece only."""

    def _encode(self, tokenizer, messages, system, tools):
        encoded = super()._encode(tokenizer, messages, system, tools)
        if messages and messages[-1]["role"] == "assistant":
            encoded[-1] = encoded[-1] + tokenizer.encode(END_OF_TURN, add_special_tokens=False)
        return encoded


if NAME not in TEMPLATES:
    register_template(
        name=NAME,
        format_user=StringFormatter(slots=["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"]),
        format_assistant=StringFormatter(slots=["{{content}}"]),
        format_system=StringFormatter(slots=["<|im_start|>system\n{{content}}<|im_end|>\n"]),
        format_observation=StringFormatter(slots=["{{content}}"]),
        default_system="You are a helpful assistant.",
        stop_words=[END_OF_TURN],
        replace_eos=True,
        mm_plugin=get_mm_plugin(name="qwen2_vl", image_token="<|image_pad|>", video_token="<|video_pad|>"),
        template_class=InlineObservationTemplate,
    )


if __name__ == "__main__":
    from llamafactory.train.tuner import run_exp

    run_exp()
