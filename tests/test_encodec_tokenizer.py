"""EnCodec as a tokenizer: reproducible random weights with usable codebooks, local checkpoints,
weight identity checks, and chunked encoding that agrees with whole-file encoding."""

import dataclasses
import shutil
import urllib.error

import numpy as np
import pytest
import torch

from narrator.config import from_dict
from narrator.errors import NarratorError
from narrator.tokenizers.audio import n_samples
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import ChunkingConfig, EncodecConfig, TokenizeConfig, WeightsConfig
from narrator.tokenizers.encodec import (EncodecTokenizer, load_tokenizer, random_weights_name, stream_info,
                                         synthetic_speech, token_config_hash)
from narrator.tokenizers.weights import state_dict_sha256


def random_cfg(seed: int = 0, bandwidth: float = 3.0) -> EncodecConfig:
    return EncodecConfig(bandwidth=bandwidth, weights=WeightsConfig(mode="random", seed=seed))


@pytest.fixture(scope="module")
def tokenizer() -> EncodecTokenizer:
    return EncodecTokenizer(random_cfg())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthetic_speech(12.0, seed=11).astype(np.float32)  # another seed than the codebook fill's


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("weights") / "encodec.pt"
    torch.save(tokenizer.model.state_dict(), path)
    return path


def test_random_mode_codebooks_use_hundreds_of_codes(tokenizer, speech, caplog):
    codes = tokenizer.encode(speech[: 10 * 24_000])
    assert codes.dtype == np.int16 and codes.shape == (4, 750)
    distinct = [len(np.unique(row)) for row in codes]
    print(f"distinct codes per codebook over 10 s of speech-like audio: {distinct}")
    assert min(distinct) >= 200


def test_random_weights_saved_and_loaded_are_the_same_weights(tokenizer, tmp_path, caplog):
    tokenizer = EncodecTokenizer(random_cfg(seed=3))
    tokenizer.save_weights(tmp_path / "w.safetensors")
    identity = tokenizer.weights_identity()
    assert (identity.mode, identity.source, identity.seed, identity.file) == ("random", "random-init seed=3", 3, "w.safetensors")
    with caplog.at_level("WARNING"):
        loaded = EncodecTokenizer.from_weights_file(random_cfg(seed=3, bandwidth=1.5), tmp_path / "w.safetensors")
    assert "RANDOM init (seed=3, built earlier, loaded from" in caplog.text
    assert loaded.weights_identity() == identity and loaded.n_codebooks == 2
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), tokenizer.model.state_dict().values()))
    other = dataclasses.replace(identity, sha256="0" * 64)
    with pytest.raises(NarratorError, match="w.safetensors: EnCodec weights sha256 .* differ from the 000000000000"):
        EncodecTokenizer.from_weights_file(random_cfg(seed=3), tmp_path / "w.safetensors", other)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(NarratorError, match="junk.safetensors: unreadable EnCodec weights file"):
        EncodecTokenizer.from_weights_file(random_cfg(seed=3), tmp_path / "junk.safetensors", identity)


def test_random_weights_are_loaded_from_their_folder_never_rebuilt(tmp_path, monkeypatch):
    tokenizer = EncodecTokenizer(random_cfg(seed=3))
    tokenizer.save_weights(tmp_path / random_weights_name(3))
    tcfg = TokenizeConfig(encodec=random_cfg(seed=3))
    info = stream_info(tcfg, tokenizer=tokenizer)

    def rebuild(seed):
        raise AssertionError("random weights were rebuilt")

    monkeypatch.setattr("narrator.tokenizers.encodec._random_model", rebuild)
    assert load_tokenizer(info, weights_dirs=[tmp_path / "nowhere", tmp_path]).weights_identity() == info.weights
    with pytest.raises(NarratorError, match=r"^encodec_random_seed3.safetensors: the random-init EnCodec weights .* are in none of"):
        load_tokenizer(info, weights_dirs=[tmp_path / "nowhere"])


def test_sha256_covers_every_tensor(tokenizer):
    state = {k: v.clone() for k, v in tokenizer.model.state_dict().items()}
    sha = state_dict_sha256(state)
    state["quantizer.vq.layers.3._codebook.embed"][7, 0] += 1e-6
    assert state_dict_sha256(state) != sha


def test_encode_decode_shapes(tokenizer, speech):
    batch = np.stack([speech[:24_000], speech[24_000:48_000]])
    codes = tokenizer.encode(batch)
    assert codes.shape == (2, 4, 75) and codes.dtype == np.int16
    assert np.array_equal(codes[1], tokenizer.encode(batch[1]))
    assert tokenizer.encode(speech[:1000]).shape == (4, 4)  # ceil(1000 / 320) frames
    audio = tokenizer.decode(codes[0])
    assert audio.dtype == np.float32 and audio.shape == (24_000,) and np.isfinite(audio).all()
    assert (tokenizer.n_codebooks, tokenizer.frame_rate, tokenizer.codebook_size) == (4, 75, 1024)


def test_chunked_tokens_agree_with_whole_file_tokens(tokenizer, speech):
    cfg = ChunkingConfig(chunk_seconds=2.0)  # default contexts: 2.0 s left, 0.2 s right
    whole = tokenizer.encode(speech)
    specs = plan_chunks("book", len(speech) / 24_000, cfg)
    windows = [speech[n_samples(s.ctx_start_s): n_samples(s.ctx_end_s)] for s in specs]
    chunked = np.concatenate(tokenizer.encode_chunks(windows, specs), axis=1)
    assert chunked.shape == whole.shape
    assert tokenizer.encode_chunk(windows[3], specs[3]).shape == (4, 150)
    agree = (chunked == whole).mean()
    without_context = np.concatenate([tokenizer.encode(speech[n_samples(s.start_s): n_samples(s.end_s)]) for s in specs], axis=1)
    print(f"chunked == whole-file tokens: {agree:.2%} with context (left {cfg.left_context_seconds} s, right "
          f"{cfg.right_context_seconds} s), {(without_context == whole).mean():.2%} without")
    assert agree >= 0.985  # measured 99.5% (random weights; the differences are float-noise near-ties)


def test_local_checkpoint_loads_exactly_those_weights(tokenizer, checkpoint):
    cfg = EncodecConfig(weights=WeightsConfig(mode="pretrained", checkpoint=str(checkpoint)))
    loaded = EncodecTokenizer(cfg)
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())
    identity = loaded.weights_identity()
    assert identity.sha256 == state_dict_sha256(saved) == tokenizer.weights_identity().sha256
    assert (identity.mode, identity.source, identity.seed) == ("pretrained", str(checkpoint.resolve()), None)


def test_load_tokenizer_rebuilds_and_checks_the_weights(checkpoint, tmp_path):
    tcfg = TokenizeConfig()
    tcfg.encodec.weights = WeightsConfig(mode="pretrained", checkpoint=str(checkpoint))
    info = stream_info(tcfg)
    assert load_tokenizer(info).weights_identity() == info.weights
    moved = shutil.copy(checkpoint, tmp_path / "moved.pt")
    assert load_tokenizer(info, checkpoint=str(moved)).weights_identity().sha256 == info.weights.sha256
    tcfg.encodec.weights.checkpoint = str(moved)
    assert token_config_hash(tcfg) == info.config_hash  # where the weights live is not part of the identity
    info.weights.sha256 = "0" * 64
    with pytest.raises(NarratorError, match="differ from the 000000000000 the tokens were made with"):
        load_tokenizer(info)


def test_bad_checkpoints_are_one_line_errors_naming_the_file(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    partial = tmp_path / "partial.pt"
    torch.save({"encoder.model.0.conv.conv.bias": torch.zeros(32)}, partial)
    for path, reason in [(tmp_path / "missing.pt", "checkpoint not found"), (junk, "not a loadable state_dict"),
                         (partial, "does not fit EnCodec 24 kHz")]:
        cfg = from_dict(EncodecConfig, {"weights": {"mode": "pretrained", "checkpoint": str(path)}})
        with pytest.raises(NarratorError) as e:
            EncodecTokenizer(cfg)
        assert str(e.value).startswith(f"{path}: ") and reason in str(e.value) and "\n" not in str(e.value)


def test_a_failed_download_names_the_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(NarratorError) as e:
        EncodecTokenizer(EncodecConfig())
    message = str(e.value)
    assert "could not be downloaded" in message and "encodec.weights.checkpoint=PATH" in message
    assert "encodec.weights.mode=random" in message and "\n" not in message


def test_a_chunks_codes_do_not_depend_on_the_chunks_encoded_with_it(tokenizer, speech):
    """Actor calls group chunks by ray.batch_size, and a rerun encodes only the missing shards' chunks: a
    chunk's codes must not depend on its neighbours (a CPU batch's shape moved ~0.7% of the codes)."""
    specs = plan_chunks("book", len(speech) / 24_000, ChunkingConfig(chunk_seconds=2.0))[:4]
    windows = [speech[n_samples(s.ctx_start_s): n_samples(s.ctx_end_s)] for s in specs]
    together = tokenizer.encode_chunks(windows, specs)
    pairs = tokenizer.encode_chunks(windows[:2], specs[:2]) + tokenizer.encode_chunks(windows[2:], specs[2:])
    alone = [tokenizer.encode_chunk(w, s) for w, s in zip(windows, specs)]
    for a, b, c in zip(together, pairs, alone, strict=True):
        assert np.array_equal(a, c) and np.array_equal(b, c)
