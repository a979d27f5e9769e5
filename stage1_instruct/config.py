"""Stage-1 configuration: which backend and model does each step, and how they run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.errors import ZeusError
from shared.instructions import PRESETS, InstructionStore, store_tag
from shared.preprocess import DEFAULT_IMAGE_SIZE

DESCRIBE_BACKENDS = ("image-facts", "transformers", "vllm")
INSTRUCT_BACKENDS = ("transformers", "template", "vllm")
EMBED_BACKENDS = ("sentence-transformers", "transformers", "vllm")


@dataclass(frozen=True)
class VllmOptions:
    """vLLM engine arguments (see vLLM's ``EngineArgs``)."""

    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096
    limit_images_per_prompt: int = 1


@dataclass(frozen=True)
class Stage1Config:
    describe: str = PRESETS["offline"].describe  # the defaults are the offline preset
    instruct: str = PRESETS["offline"].instruct
    embed: str = PRESETS["offline"].embed
    vlm: str | None = None  # model id or path for the describe step (vllm, transformers)
    llm: str | None = None  # model id or path for the instruct step
    embedder: str | None = None  # model id or path for the embed step
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    image_size: int = DEFAULT_IMAGE_SIZE
    tag: str | None = None  # the store's folder name; default: describe.instruct.embed
    vllm: VllmOptions = field(default_factory=VllmOptions)

    def __post_init__(self) -> None:
        for step, value, allowed in (
            ("describe", self.describe, DESCRIBE_BACKENDS),
            ("instruct", self.instruct, INSTRUCT_BACKENDS),
            ("embed", self.embed, EMBED_BACKENDS),
        ):
            if value not in allowed:
                raise ZeusError(f"--{step} backend must be one of {allowed}, got {value!r}")
        if self.describe != "image-facts" and not self.vlm:
            raise ZeusError(f"the {self.describe!r} describe backend needs --vlm (a model id or path)")
        if self.instruct == "vllm" and not self.llm:
            raise ZeusError("the 'vllm' instruct backend needs --llm (a model id or path)")
        if self.embed == "vllm" and not self.embedder:
            raise ZeusError("the 'vllm' embed backend needs --embedder (a model id or path)")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ZeusError("max_new_tokens and batch_size must be positive")

    @property
    def store_tag(self) -> str:
        return self.tag or store_tag(self.describe, self.instruct, self.embed)

    def generation_params(self) -> dict[str, Any]:
        """What changes generated text besides models and prompts: part of every request key."""
        return {"max_new_tokens": self.max_new_tokens, "decoding": "greedy", "seed": self.seed}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Stage1Config:
        """A ``--backend`` preset's three backends (``shared.instructions.PRESETS``), other fields overridden."""
        if name not in PRESETS:
            raise ZeusError(f"--backend must be one of {list(PRESETS)}, got {name!r}")
        preset = PRESETS[name]
        return cls(**{"describe": preset.describe, "instruct": preset.instruct, "embed": preset.embed, **overrides})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stage1Config:
        return cls(**{**data, "vllm": VllmOptions(**data.get("vllm", {}))})

    @classmethod
    def from_store(cls, store: InstructionStore) -> Stage1Config:
        """The configuration that wrote a store (from its Parquet provenance), to rerun it on new scans."""
        data = store.stage1_config()
        if data is None:
            raise ZeusError(f"no instructions in {store.folder}: cannot tell which stage-1 models wrote them")
        return cls.from_json({**data, "tag": store.tag})
