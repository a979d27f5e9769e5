"""What every vLLM backend shares: the offline engine and greedy sampling parameters.

Deterministic: greedy decoding with a fixed seed. Backends start their engine on first use, so cached runs
never start one. Models are Hugging Face ids or local folders (e.g. Qwen/Qwen2.5-VL-7B-Instruct,
google/medgemma-4b-it, Qwen/Qwen2.5-7B-Instruct, intfloat/e5-mistral-7b-instruct).
"""

from __future__ import annotations

import logging
from typing import Any

from stage1_instruct.config import VllmOptions

log = logging.getLogger(__name__)


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
