"""The boundary token after training: `generate` turns sampled boundaries into silence and refuses a mismatch."""

import json

import numpy as np
import pytest
from accelerate import Accelerator

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.streaming.layout import FlatLayout
from narrator.tokenfolder.manifest import Manifest
from narrator.trainer.checkpoint import TrainerState, save_checkpoint
from narrator.trainer.config import TrainConfig
from narrator.trainer.generate import BOUNDARY_SILENCE_S, GenerateConfig, generate, tokens_to_audio
from narrator.trainer.model import GPT, PRESETS, GPTConfig

RATE = 24000
HOP = 320  # samples per frame at 75 Hz


def fake_decode(codes: np.ndarray) -> np.ndarray:
    """One constant HOP-sample step per frame, at the level of its codebook-0 code (never 0)."""
    return np.repeat((codes[0] + 1) / 2048, HOP).astype(np.float32)


def test_sampled_boundaries_become_silence_between_decoded_runs():
    layout = FlatLayout(4)
    a, b = np.full((4, 3), 10), np.full((4, 2), 20)
    tokens = np.concatenate([layout.to_tokens(a), layout.boundary_frame, layout.to_tokens(b)])
    audio, boundaries = tokens_to_audio(tokens, layout, fake_decode, RATE)
    silence = round(BOUNDARY_SILENCE_S * RATE)
    assert boundaries == 1 and len(audio) == 5 * HOP + silence
    assert (audio[: 3 * HOP] == 11 / 2048).all() and (audio[3 * HOP : 3 * HOP + silence] == 0).all()
    assert (audio[3 * HOP + silence :] == 21 / 2048).all()

    plain, none = tokens_to_audio(layout.to_tokens(a), layout, fake_decode, RATE)
    assert none == 0 and len(plain) == 3 * HOP
    # a boundary sampled mid-frame, twice in a row, and as the very last frame: a silence each, nothing decoded empty
    mid = layout.to_tokens(a)
    mid[-2] = layout.boundary_token
    tokens = np.concatenate([mid, layout.boundary_frame, layout.to_tokens(b), layout.boundary_frame])
    audio, boundaries = tokens_to_audio(tokens, layout, fake_decode, RATE)
    assert boundaries == 3 and len(audio) == 2 * HOP + 2 * HOP + 3 * silence


def test_generate_refuses_a_checkpoint_whose_boundary_token_differs(token_folder, tmp_path):
    manifest = Manifest.load(token_folder)
    config = GPTConfig(block_size=16, vocab_size=4097, dropout=0.0, **PRESETS["tiny"])
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(GPT(config))
    state = TrainerState(1, 64, 1, "cfg", "test-tokens", "flat", False, boundary_token=4096)
    train_cfg = TrainConfig(data=DataConfig(manifest=str(token_folder)))
    path = save_checkpoint(accelerator, model, tmp_path / "run", state, manifest.streams, train_cfg, keep=1)
    saved = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**saved, "boundary_token": 5}))
    with pytest.raises(NarratorError) as e:
        generate(GenerateConfig(checkpoint=str(path), prompt=str(tmp_path / "never-read.wav"), device="cpu"))
    assert str(e.value) == f"{path}: trained with boundary token 5, but its layout gives 4096"
