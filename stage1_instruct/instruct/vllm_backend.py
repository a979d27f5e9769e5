"""Instructions from a text LLM served by vLLM: the answer is started for the model (``answer_prefix``) and
continued, then tidied like every backend's (``clean_instruction``)."""

from __future__ import annotations

from collections.abc import Sequence

from stage1_instruct.config import VllmOptions
from stage1_instruct.instruct import InstructItem, answer_prefix, clean_instruction
from stage1_instruct.vllm_engine import engine, sampling


class VllmInstructor:
    source = "llm"

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
