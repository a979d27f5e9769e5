"""The composition root of stage 1: backend names -> objects. Heavy libraries load lazily inside them."""

from __future__ import annotations

from dataclasses import dataclass

from stage1_instruct.config import Stage1Config
from stage1_instruct.describe import Describer
from stage1_instruct.embed import Embedder
from stage1_instruct.instruct import Instructor


@dataclass
class Backends:
    """The three steps' backends of one stage-1 configuration."""

    describer: Describer
    instructor: Instructor
    embedder: Embedder


def build_backends(config: Stage1Config) -> Backends:
    return Backends(_describer(config), _instructor(config), _embedder(config))


def _describer(config: Stage1Config) -> Describer:
    if config.describe == "image-facts":
        from stage1_instruct.describe.image_facts import ImageFactsDescriber

        return ImageFactsDescriber()
    if config.describe == "transformers":
        from stage1_instruct.describe.transformers_backend import TransformersDescriber

        return TransformersDescriber(config.vlm, max_new_tokens=4 * config.max_new_tokens)
    from stage1_instruct.describe.vllm_backend import VllmDescriber

    return VllmDescriber(config.vlm, config.vllm, max_new_tokens=4 * config.max_new_tokens, seed=config.seed)


def _instructor(config: Stage1Config) -> Instructor:
    if config.instruct == "template":
        from stage1_instruct.instruct.template import TemplateInstructor

        return TemplateInstructor()
    if config.instruct == "transformers":
        from stage1_instruct.instruct.transformers_backend import TransformersInstructor

        return TransformersInstructor(config.llm, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    from stage1_instruct.instruct.vllm_backend import VllmInstructor

    return VllmInstructor(config.llm, config.vllm, max_new_tokens=config.max_new_tokens, seed=config.seed)


def _embedder(config: Stage1Config) -> Embedder:
    if config.embed == "sentence-transformers":
        from stage1_instruct.embed.sentence_transformers_backend import SentenceTransformersEmbedder

        return SentenceTransformersEmbedder(config.embedder)
    if config.embed == "transformers":
        from stage1_instruct.embed.transformers_backend import TransformersEmbedder

        return TransformersEmbedder(config.embedder)
    from stage1_instruct.embed.vllm_backend import VllmEmbedder

    return VllmEmbedder(config.embedder, config.vllm)
