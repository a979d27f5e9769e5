"""Descriptions from a vision-language model served by vLLM: batched ``LLM.chat`` with one image per prompt
and JSON-schema structured output (the fields of ``FIELDS``)."""

from __future__ import annotations

from collections.abc import Sequence

from stage1_instruct.config import VllmOptions
from stage1_instruct.describe import FIELDS, DescribeItem, Description, parse_description
from stage1_instruct.instruct import target_name
from stage1_instruct.prompts import Prompts, render
from stage1_instruct.vllm_engine import engine, sampling

DESCRIPTION_SCHEMA = {
    "type": "object",
    "properties": {field: {"type": "string"} for field in FIELDS},
    "required": list(FIELDS),
    "additionalProperties": False,
}


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
                            "text": render(
                                self.template,
                                modality=item.modality_phrase,
                                instance=target_name(item.target),
                                position=item.level_words(),
                            ),
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
