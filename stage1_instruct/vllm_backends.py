"""vLLM backends for the three steps: a vision-language model describes (batched ``LLM.chat`` with one image
per prompt and JSON-schema structured output), a text LLM instructs, a pooling model embeds.

Deterministic: greedy decoding with a fixed seed. Engines start on first use, so cached runs never start
one. Models are Hugging Face ids or local folders (e.g. Qwen/Qwen2.5-VL-7B-Instruct, google/medgemma-4b-it,
Qwen/Qwen2.5-7B-Instruct, intfloat/e5-mistral-7b-instruct).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from stage1_instruct.config import VllmOptions
from stage1_instruct.describe import FIELDS, DescribeItem, Description, parse_description
from stage1_instruct.instruct import InstructItem, answer_prefix, clean_instruction
from stage1_instruct.prompts import Prompts, render

log = logging.getLogger(__name__)

DESCRIPTION_SCHEMA = {
    "type": "object",
    "properties": {field: {"type": "string"} for field in FIELDS},
    "required": list(FIELDS),
    "additionalProperties": False,
}


def engine(model: str, options: VllmOptions, **extra: Any):
    """A vLLM offline engine with the stage's engine arguments."""
    from vllm import LLM

    log.info("starting vLLM engine for %s", model)
    kwargs = {
        "model": model,
        "tensor_parallel_size": options.tensor_parallel_size,
        "max_num_seqs": options.max_num_seqs,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_model_len": options.max_model_len,
        "seed": 0,
        **extra,
    }
    if options.data_parallel_size > 1:
        kwargs["data_parallel_size"] = options.data_parallel_size
    return LLM(**kwargs)


def sampling(max_tokens: int, seed: int, json_schema: dict | None = None):
    from vllm import SamplingParams

    structured = None
    if json_schema is not None:
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=json_schema)
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed, structured_outputs=structured)


class VllmDescriber:
    def __init__(self, model: str, options: VllmOptions, *, max_new_tokens: int = 256, seed: int = 0):
        self.model, self.options, self.max_new_tokens, self.seed = model, options, max_new_tokens, seed
        self.model_id = model
        self.template = Prompts.load().describe
        self._llm = None

    def describe(self, items: Sequence[DescribeItem]) -> list[Description]:
        if self._llm is None:
            self._llm = engine(
                self.model, self.options, limit_mm_per_prompt={"image": self.options.limit_images_per_prompt}
            )
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_pil", "image_pil": item.to_pil()},
                        {
                            "type": "text",
                            "text": render(self.template, modality=item.modality_phrase, instance=item.target),
                        },
                    ],
                }
            ]
            for item in items
        ]
        outputs = self._llm.chat(
            conversations, sampling(self.max_new_tokens, self.seed, DESCRIPTION_SCHEMA), use_tqdm=False
        )
        return [parse_description(out.outputs[0].text) for out in outputs]


class VllmInstructor:
    def __init__(self, model: str, options: VllmOptions, *, max_new_tokens: int = 64, seed: int = 0):
        self.model, self.options, self.max_new_tokens, self.seed = model, options, max_new_tokens, seed
        self.model_id = model
        self._llm = None

    def instruct(self, items: Sequence[InstructItem]) -> list[str]:
        if self._llm is None:
            self._llm = engine(self.model, self.options)
        prefixes = [answer_prefix(item) for item in items]
        conversations = [
            [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": prefix}]
            for item, prefix in zip(items, prefixes, strict=True)
        ]
        outputs = self._llm.chat(
            conversations,
            sampling(self.max_new_tokens, self.seed),
            add_generation_prompt=False,
            continue_final_message=True,
            use_tqdm=False,
        )
        return [
            clean_instruction(prefix + out.outputs[0].text, item.target)
            for prefix, out, item in zip(prefixes, outputs, items, strict=True)
        ]


class VllmEmbedder:
    def __init__(self, model: str, options: VllmOptions):
        self.model, self.options = model, options
        self.model_id = model
        self._llm = None

    def _engine(self):
        if self._llm is None:
            self._llm = engine(self.model, self.options, runner="pooling")
        return self._llm

    @property
    def dim(self) -> int:
        return len(self._engine().embed(["dimension probe"], use_tqdm=False)[0].outputs.embedding)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        outputs = self._engine().embed(list(texts), use_tqdm=False)
        vectors = np.asarray([out.outputs.embedding for out in outputs], np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
