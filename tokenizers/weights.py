"""Model weights as the token format knows them: identified by a sha256 over the state_dict, and,
for random-init models, kept beside the tokens as safetensors and read back, never rebuilt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from narrator.errors import NarratorError
from narrator.tokenfolder.manifest import WeightsIdentity


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of every tensor, in key order."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write `state_dict` as safetensors at `path`, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state_dict saved at `path`; one-line NarratorError naming the file when it is missing or damaged."""
    if not path.is_file():
        raise NarratorError(f"{path}: {what} weights file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise NarratorError(f"{path}: unreadable {what} weights file ({type(e).__name__})") from None


def checked_identity(sha256: str, identity: WeightsIdentity | None, random_source: str, seed: int, where: str | None,
                     what: str) -> WeightsIdentity:
    """`identity`, refused unless `sha256` is its checksum; None: the identity of random weights saved at `where`."""
    if identity is None:
        return WeightsIdentity(mode="random", source=random_source, sha256=sha256, seed=seed,
                               file=Path(where).name if where else None)
    if sha256 != identity.sha256:
        raise NarratorError(f"{where or identity.source}: {what} weights sha256 {sha256[:12]} differ from the "
                            f"{identity.sha256[:12]} the tokens were made with ({identity.source})")
    return identity
