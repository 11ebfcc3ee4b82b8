"""encodec.precision / whisper.precision: the models under fp16/bf16 autocast (here on the CPU, as GPU actors run
them on CUDA) move some tokens, fp32 stays what the models give by themselves, and the precision is part of each
stream's config, so a folder never holds both: fp32 (the default) is left out of it, keeping the hash of folders
made before the key existed."""

import dataclasses

import numpy as np
import pytest
import torch

from narrator.config import config_hash, load_config
from narrator.errors import ConfigError
from narrator.tokenizers.config import EncodecConfig, TokenizeConfig, WeightsConfig, WhisperConfig, WhisperWeightsConfig
from narrator.tokenizers.encodec import EncodecTokenizer, synthetic_speech, token_config, token_config_hash
from narrator.tokenizers.semantic import semantic_config
from narrator.tokenizers.whisper import WhisperEmbedder


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthetic_speech(6.0, seed=11).astype(np.float32)


def test_encodec_fp32_is_encodecs_own_encode_and_half_precision_moves_codes(speech):
    fp32 = EncodecTokenizer(EncodecConfig(weights=WeightsConfig(mode="random")))
    a = fp32.encode(speech)
    with torch.inference_mode():
        (own, _), = fp32.model.encode(torch.from_numpy(speech)[None, None])
    assert np.array_equal(a, own[0].numpy())  # fp32: bit for bit what EncodecModel.encode gives
    agree = {}
    for precision in ("fp16", "bf16"):
        half = EncodecTokenizer.from_state_dict(dataclasses.replace(fp32.cfg, precision=precision),
                                                fp32.model.state_dict(), fp32.weights_identity())
        b = half.encode(speech)
        assert b.shape == (4, 450) and b.dtype == np.int16 and not np.array_equal(a, b)  # autocast really ran
        agree[precision] = (a == b).mean(axis=1)  # per codebook
    # Random weights are the worst case: the encoder's frames spread over 0.2% of their scale, so rounding moves
    # many (measured on 2 CPU cores: fp16 68/62/53/46%, bf16 30/17/10/6% of codes equal to fp32 per codebook).
    print({k: np.round(v, 3) for k, v in agree.items()})
    assert agree["fp16"][0] > 0.5 and agree["fp16"].mean() > agree["bf16"].mean()


def test_whisper_in_bf16_gives_embeddings_close_to_fp32(speech):
    cfg = WhisperConfig(model="tiny", weights=WhisperWeightsConfig(mode="random"))
    fp32 = WhisperEmbedder(cfg)
    bf16 = WhisperEmbedder.from_state_dict(dataclasses.replace(cfg, precision="bf16"), fp32.encoder.state_dict(),
                                           fp32.weights_identity())
    a, b = fp32.embed(speech), bf16.embed(speech)
    assert a.shape == b.shape == (300, 384) and b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"bf16 vs fp32 Whisper embeddings: cosine min {cosine.min():.4f}, mean {cosine.mean():.4f}")
    assert cosine.mean() > 0.99 and not np.array_equal(a, b)


def test_precision_is_part_of_each_streams_config_and_fp32_keeps_the_old_hash():
    fp32 = load_config(TokenizeConfig, None, ["streams=[semantic, acoustic]"])
    half = load_config(TokenizeConfig, None, ["streams=[semantic, acoustic]", "encodec.precision=bf16",
                                              "whisper.precision=fp16"])
    assert "precision" not in token_config(fp32)["encodec"] and "precision" not in semantic_config(fp32)["whisper"]
    # The hash of the default acoustic config before the key existed (the same dict: bandwidth, weights, chunking).
    assert token_config_hash(fp32) == "07997e1a6afef21b" == config_hash({
        "encodec": {"bandwidth": 3.0, "weights": {"mode": "pretrained", "seed": 0}},
        "chunking": {"chunk_seconds": 30.0, "left_context_seconds": 2.0, "right_context_seconds": 0.2}})
    assert token_config(half)["encodec"]["precision"] == "bf16" and token_config_hash(half) != token_config_hash(fp32)
    assert semantic_config(half)["whisper"]["precision"] == "fp16" != semantic_config(fp32)["whisper"].get("precision")
    with pytest.raises(ConfigError, match="precision"):
        load_config(TokenizeConfig, None, ["encodec.precision=fp8"])
