"""Descriptions from a vision-language model through transformers (``AutoModelForImageTextToText``), from a
local folder or a Hugging Face id: e.g. Qwen2.5-VL, SmolVLM, MedGemma. Greedy decoding; the answer is
asked for as JSON and parsed (free text is kept whole)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stage1_instruct.describe import DescribeItem, Description, parse_description
from stage1_instruct.instruct import target_name
from stage1_instruct.prompts import Prompts, render

log = logging.getLogger(__name__)


class TransformersDescriber:
    def __init__(self, model: str, *, max_new_tokens: int = 256):
        self.model_name, self.max_new_tokens = model, max_new_tokens
        self.model_id = model
        self.template = Prompts.load().describe
        self._model = self._processor = None

    def _load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        log.info("loading vision-language model %s", self.model_name)
        self._processor = AutoProcessor.from_pretrained(self.model_name)
        self._model = AutoModelForImageTextToText.from_pretrained(self.model_name).eval()

    def describe(self, items: Sequence[DescribeItem]) -> list[Description]:
        import torch

        if self._model is None:
            self._load()
        out = []
        for item in items:
            text = render(
                self.template,
                modality=item.modality_phrase,
                instance=target_name(item.target),
                position=item.level_words(),
            )
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            prompt = self._processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self._processor(images=[item.to_pil()], text=prompt, return_tensors="pt")
            with torch.inference_mode():
                generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            answer = self._processor.batch_decode(
                generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            out.append(parse_description(answer[0]))
        return out
