"""The one place thyme_train leans on private methods of TRL's trainers (and of transformers'
`Trainer` beneath them), each because no public hook does the job at the pinned versions (TRL
1.16.0, transformers 5.20.2). tests/test_trl_adapter.py runs each through the library so that a
change there fails loudly, not silently.

1. `GRPOTrainer._generate`: images inside completions. TRL's public `rollout_func` returns
   prompt/completion ids, log-probs, `env_mask` (0 = sandbox tokens: no loss) and extra fields
   for the reward functions, but no images: on that path TRL builds the training forward pass's
   vision inputs from the dataset's prompt images only; only its own `tools=` loop (and
   `environment_factory`, which runs TRL's generation, not ours) may add images inside a
   completion. `ThymeGRPOTrainer._generate` hands TRL each completion's images (the prompt's,
   then the sandbox's; the rollout's `rollout_images` / `prompt_image_count`) and marks the batch
   as holding tool images, so TRL builds pixel values and `mm_token_type_ids` from the full
   sequences. It reads `_generate`'s return tuple by name (GENERATE_FIELDS) and fails if its
   length changes.
2. `GRPOTrainer.use_vllm` (an attribute, set from `GRPOConfig.use_vllm`): the importance-sampling
   correction. TRL corrects for the gap between the sampling engine and the trained policy
   (`vllm_importance_sampling_correction`, its mode and clip bounds, with the ratio's statistics
   under `sampling/...`) only when it runs vLLM itself, reading the engine's log-probs from the
   `logprobs` that `rollout_func` returns. Our rollouts run our own engines, so `use_vllm` stays
   False at construction (TRL would start its own vLLM) and is set to True afterwards, with a
   `vllm_generation` that does nothing (our rollout_func syncs the engine's weights itself):
   then TRL's correction runs on our behaviour log-probs. What else reads `use_vllm` in TRL
   1.16 is its own generation and tool loop, neither of which runs on the rollout_func path
   (`tests/test_trl_adapter.py` checks both).
3. `GRPOTrainer._get_train_sampler`: which prompts a step draws. TRL's `RepeatSampler` walks the
   data in epochs; curriculum and prioritized sampling (thyme_train.sampling) replace it with a
   sampler of the same layout.
4. `GRPOTrainer._generate_and_score_completions`: DAPO's dynamic sampling
   (thyme_train.dynamic_sampling) swaps groups of the batch's rows for others before TRL
   generates and scores them; the only hook that sees the rows (solutions included) before
   generation. TRL then runs as usual on the new rows, its `rollout_func` call answered with the
   rollouts dynamic sampling already made.
5. `Trainer._load_from_checkpoint`: strict resume. transformers 5 saves Qwen2.5-VL in the hub's
   key layout (`model.layers.*`, `visual.*`) while the module is `model.language_model.*`,
   `model.visual.*`; `Trainer` resumes with `load_state_dict(strict=False)` and so silently keeps
   the weights it started with (transformers issue #43701). Both trainers here resume through
   `load_checkpoint_weights` (DeepSpeed and FSDP resume through their own states).
5. `SFTTrainer._total_train_tokens` / `_metrics`: the logged `num_tokens`. TRL counts a batch
   without an attention mask as `position_ids.size(1)` tokens, which is 1 for Qwen2.5-VL's
   packed (4, 1, N) positions (thyme_train.packing); `PackedTokenCount` counts the N
   (tests/test_sft.py, the padding-free test).

What has a public hook uses it: the rollout is TRL's `rollout_func`, the rollout statistics are
logged through the `log_metric` TRL hands every reward function (thyme_train.grpo), the metrics
file and curves come from a `TrainerCallback`.
"""

from __future__ import annotations

from pathlib import Path

# What GRPOTrainer._generate returns, in order (TRL 1.16.0).
GENERATE_FIELDS = ("prompt_ids", "completion_ids", "tool_mask", "completions", "logprobs",
                   "extra_fields", "images", "tool_images")


def load_checkpoint_weights(model, checkpoint: str) -> None:
    """Load a Trainer checkpoint's weights into `model`, strictly: the saved keys are renamed the
    way `from_pretrained` renames them (transformers' conversion mapping), and a checkpoint that
    does not cover the model is an error naming the keys."""
    import safetensors.torch
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    files = sorted(Path(checkpoint).glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no model*.safetensors to resume from")
    conversions = getattr(model, "_weight_conversions", None) or get_model_conversion_mapping(model)
    if any(isinstance(c, WeightConverter) for c in conversions):
        raise NotImplementedError(f"{type(model).__name__} converts weights on load (not only "
                                  f"renames them): resume it with DeepSpeed or FSDP checkpoints")
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    state = {}
    for f in files:
        for key, tensor in safetensors.torch.load_file(f, device="cpu").items():
            state[rename_source_key(key, renamings, [])[0]] = tensor
    own = model.state_dict()
    # A tied weight (lm_head = embeddings) is saved once: it loads through its twin.
    loaded = {own[k].data_ptr() for k in own if k in state}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: checkpoint does not match the model (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]})")
    model.load_state_dict(state, strict=False)


class StrictResume:
    """Mixin for a transformers `Trainer`: resume the model's weights with
    `load_checkpoint_weights` (see the module docstring, 4)."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)


class PackedTokenCount:
    """Mixin for TRL's SFTTrainer: the `num_tokens` metric of padding-free batches counts their
    tokens (see the module docstring, 5)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        positions = inputs.get("position_ids")
        packed = "attention_mask" not in inputs and positions is not None and positions.dim() == 3
        before = self._total_train_tokens
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if packed and self.model.training:
            import torch

            tokens = torch.tensor(positions.size(-1), device=positions.device)
            self._total_train_tokens = before + (
                self.accelerator.gather_for_metrics(tokens).sum().item() // self._tp_size)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result


def sft_trainer_class():
    """`ThymeSFTTrainer`: TRL's SFTTrainer with strict resume and the token count of packed
    batches (defined on first use: importing TRL is slow)."""
    from trl import SFTTrainer

    class ThymeSFTTrainer(StrictResume, PackedTokenCount, SFTTrainer):
        pass

    return ThymeSFTTrainer


class _EngineOutsideTRL:
    """What TRL's `vllm_generation` is when our rollout_func owns the engine (see 2): TRL's
    weight-sync call does nothing; anything else TRL would ask of its own vLLM is an error."""

    def sync_weights(self):
        pass

    def __getattr__(self, name):
        raise RuntimeError(f"TRL asked its own vLLM for {name!r}, but thyme_train's rollout_func "
                           "owns the engine: thyme_train.trl_adapter needs updating for this TRL")


def grpo_trainer_class():
    """`ThymeGRPOTrainer`: TRL's GRPOTrainer whose `rollout_func` may return the images inside
    each completion, with TRL's importance-sampling correction on our engines' log-probs (when
    `args.vllm_importance_sampling_correction`), an optional `prompt_sampling`
    (thyme_train.sampling.PromptSampling), optional `dynamic_sampling`
    (thyme_train.dynamic_sampling.DynamicSampling) and strict resume."""
    from trl import GRPOTrainer

    def _sandbox(code: str) -> str:
        """Runs Python in the Thyme sandbox (executed by the rollout loop, never by TRL)."""
        raise RuntimeError("the Thyme sandbox runs inside the rollout loop, not as a TRL tool")

    class ThymeGRPOTrainer(StrictResume, GRPOTrainer):
        def __init__(self, *args, prompt_sampling=None, dynamic_sampling=None, **kwargs):
            self.prompt_sampling = prompt_sampling
            self.dynamic_sampling = dynamic_sampling
            super().__init__(*args, **kwargs)
            if self.rollout_func is not None and self.args.vllm_importance_sampling_correction:
                if self.args.use_vllm:
                    raise ValueError("use_vllm would start TRL's own vLLM beside our rollout engine")
                self.use_vllm = True
                self.vllm_generation = _EngineOutsideTRL()
                self._last_loaded_step = -1

        def _get_train_sampler(self, dataset=None):
            if self.prompt_sampling is None:
                return super()._get_train_sampler(dataset)
            return self.prompt_sampling.sampler(
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation)

        def _generate_and_score_completions(self, inputs):
            if self.dynamic_sampling is not None and self.model.training:
                inputs = self.dynamic_sampling.fill(inputs, self)
            return super()._generate_and_score_completions(inputs)

        def _generate(self, prompts):
            self.tools = []   # TRL's own tool loop must not run: our rollouts ran the sandbox
            out = super()._generate(prompts)
            if len(out) != len(GENERATE_FIELDS):
                raise RuntimeError(f"GRPOTrainer._generate returned {len(out)} values, not the "
                                   f"{len(GENERATE_FIELDS)} of TRL 1.16 {GENERATE_FIELDS}: "
                                   "thyme_train.trl_adapter needs updating for this TRL")
            out = dict(zip(GENERATE_FIELDS, out, strict=True))
            images = out["extra_fields"].pop("rollout_images", None)
            counts = out["extra_fields"].pop("prompt_image_count", None)
            if images is not None:
                images = [list(i) for i in images]
                tool_images = [i[n:] for i, n in zip(images, counts, strict=True)]
                # the rollout's own images (the dataset's are file paths), None when there are none
                out["images"] = images if any(images) else None
                out["tool_images"] = tool_images
                if any(tool_images):
                    self.tools = [_sandbox]   # makes TRL build vision inputs from full sequences
                    self._check_image_tokens(out["prompt_ids"], out["completion_ids"], images)
                self.last_image_counts = [len(i) for i in images]   # for inspection
            return tuple(out[name] for name in GENERATE_FIELDS)

        def _check_image_tokens(self, prompt_ids, completion_ids, images):
            """TRL silently drops every image of the batch when a sequence's image tokens do not
            match its images; fail loudly instead (a rollout/processor disagreement)."""
            processor = self.processing_class
            pad = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
            ip = processor.image_processor
            merge = getattr(ip, "merge_size", 1) ** 2
            for i, (p, c, imgs) in enumerate(zip(prompt_ids, completion_ids, images, strict=True)):
                have = sum(t == pad for t in list(p) + list(c))
                want = int(ip(images=imgs, return_tensors="pt")["image_grid_thw"].prod(-1).sum()) // merge \
                    if imgs else 0
                if have != want:
                    raise RuntimeError(f"completion {i}: {have} image tokens but its {len(imgs)} "
                                       f"image(s) make {want}")

    return ThymeGRPOTrainer
