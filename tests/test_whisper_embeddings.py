"""Whisper's encoder as an embedder: 50 Hz frames on the chunk grid, the book's 30 s window grid that makes
chunked ids agree with whole-file ids, layer selection, and weights (random kept as a file, local
checkpoints, a failed download). Random-init tiny throughout; real tiny.en weights when ../shared has them."""

import dataclasses
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from narrator.errors import ConfigError, NarratorError
from narrator.tokenizers.audio import n_samples, read_segment
from narrator.tokenizers.chunking import plan_chunks
from narrator.tokenizers.config import ChunkingConfig
from narrator.tokenizers.encodec import synthetic_speech
from narrator.tokenizers.weights import state_dict_sha256
from narrator.tokenizers.config import WHISPER_MODELS, WhisperConfig, WhisperWeightsConfig
from narrator.tokenizers.whisper import WHISPER_ENCODERS, WhisperEmbedder, plan_windows

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # <repo>/../shared
TINY_EN = SHARED / "weights" / "whisper-tiny.en.pt"
CLIPS = ["librispeech_1089-134686-0000.flac", "librispeech_2412-153948-0000.flac", "librispeech_198-209-0000.hq.ogg",
         "librispeech_5703-47212-0000.hq.ogg", "librispeech_3436-172162-0000.hq.ogg"]


def random_cfg(seed: int = 0, layer: int = -1, model: str = "tiny") -> WhisperConfig:
    return WhisperConfig(model=model, layer=layer, weights=WhisperWeightsConfig(mode="random", seed=seed))


def chunk_windows(audio: np.ndarray, cfg: ChunkingConfig):
    specs = plan_chunks("book", len(audio) / 24_000, cfg)
    return [audio[n_samples(s.ctx_start_s): n_samples(s.ctx_end_s)] for s in specs], specs


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def embedder() -> WhisperEmbedder:
    return WhisperEmbedder(random_cfg())


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return synthetic_speech(67.3, seed=11).astype(np.float32)  # 3 encoder windows, the last one partly padding


@pytest.fixture(scope="module")
def whole(embedder, speech) -> np.ndarray:
    return embedder.embed(speech)


def test_book_windows_are_the_30s_grid():
    assert plan_windows(0, 3365) == [(0, 0, 1500), (1, 1500, 3000), (2, 3000, 3365)]
    assert plan_windows(1400, 1600) == [(0, 1400, 1500), (1, 1500, 1600)]
    assert plan_windows(1500, 3000) == [(1, 1500, 3000)]
    assert plan_windows(7, 7) == []


@pytest.mark.parametrize("chunking", [ChunkingConfig(30.0, 2.0, 0.2), ChunkingConfig(12.0, 2.0, 0.2), ChunkingConfig(16.0, 0.0, 0.0)])
def test_chunks_give_50_frames_per_second_aligned_with_the_whole_file(embedder, speech, whole, chunking):
    windows, specs = chunk_windows(speech, chunking)
    chunks = embedder.embed_chunks(windows, specs)
    assert specs[-1].end_s - specs[-1].start_s < chunking.chunk_seconds  # a short last chunk
    for spec, emb in zip(specs, chunks):
        assert emb.dtype == np.float32 and emb.shape == (round(50 * (spec.end_s - spec.start_s)), embedder.dim)
        at = slice(round(50 * spec.start_s), round(50 * spec.end_s))
        assert cosine(emb, whole[at]).mean() > 0.99  # the chunk's frames are the book's frames at its times
    assert sum(len(e) for e in chunks) == 3364 and len(whole) == 3365  # the chunks' 0.04 s grid ends at 67.28 s


def test_a_recording_shorter_than_a_window(embedder):
    audio = synthetic_speech(1.3, seed=5).astype(np.float32)
    whole = embedder.embed(audio)
    assert whole.shape == (65, 384)
    windows, specs = chunk_windows(audio, ChunkingConfig())
    assert [s.end_s for s in specs] == [1.28]  # the 0.04 s grid drops the last 0.02 s
    chunk, = embedder.embed_chunks(windows, specs)
    assert chunk.shape == (64, 384)
    assert cosine(chunk, whole[:64]).min() > 0.99  # the chunk lacks the last 0.02 s of audio
    assert embedder.embed(audio[:100]).shape == (0, 384)


def test_frame_i_is_at_i_times_20_ms(embedder):
    """A 2 ms click at 37.465 s (inside frame 1873: 37.46-37.48 s, whose centre whisper's centred STFT puts
    at 37.46 s) changes frame 1873 most, whole-file and chunked alike. Speech around it keeps the
    window's loudest mel frame, and so whisper's (max - 8) clamp, the same."""
    speech = 0.5 * synthetic_speech(40.0, seed=4).astype(np.float32)
    click = speech.copy()
    click[n_samples(37.465): n_samples(37.465) + 48] += 0.1
    changed = np.linalg.norm(embedder.embed(click) - embedder.embed(speech), axis=1)
    assert changed.argmax() == 1873
    cfg = ChunkingConfig(4.0, 2.0, 0.2)
    (windows, specs), (speech_windows, _) = chunk_windows(click, cfg), chunk_windows(speech, cfg)
    changed = np.linalg.norm(embedder.embed_chunk(windows[9], specs[9]) - embedder.embed_chunk(speech_windows[9], specs[9]), axis=1)
    assert specs[9].start_s == 36.0 and changed.argmax() == 1873 - 1800


def test_window_position_not_context_decides_the_embedding(embedder, speech):
    """Why the windows sit on the book's 30 s grid: moving a window by 1 s changes its frames far more
    than cutting the audio right after them."""
    base = embedder.embed(speech[: 30 * 24_000])
    moved = embedder.embed(speech[50 * 480: 50 * 480 + 30 * 24_000])  # the window starts 1 s later
    cut = embedder.embed(speech[: 20 * 24_000])  # zeros after 20 s
    moved_cos = cosine(base[300:1000], moved[250:950]).mean()
    cut_cos = cosine(base[900:1000], cut[900:1000]).mean()
    print(f"cosine to the same frames: window moved by 1 s {moved_cos:.3f}, audio cut 0-2 s after them {cut_cos:.4f}")
    assert moved_cos < 0.8 and cut_cos > 0.99


def test_chunked_ids_agree_with_whole_file_ids(embedder, speech, whole):
    """k-means ids (k=64, fit on the whole-file embeddings) of chunked vs whole-file embeddings."""
    kmeans = KMeans(n_clusters=64, n_init=1, random_state=0).fit(whole)
    ids = kmeans.predict(whole)
    figures = {}
    for name, cfg in {"default 30 s chunks": ChunkingConfig(), "10 s chunks": ChunkingConfig(chunk_seconds=10.0)}.items():
        windows, specs = chunk_windows(speech, cfg)
        chunked = np.concatenate(embedder.embed_chunks(windows, specs))
        assert len(chunked) == 3364  # 67.28 s: the chunk grid drops the last 0.02 s
        cos = cosine(chunked, whole[:3364])
        figures[name] = ((kmeans.predict(chunked) == ids[:3364]).mean(), cos.mean(), cos.min())
        print(f"{name} (context {cfg.left_context_seconds} s / {cfg.right_context_seconds} s): ids agree "
              f"{figures[name][0]:.2%}, cosine mean {figures[name][1]:.5f} min {figures[name][2]:.4f}")
    assert figures["default 30 s chunks"][0] == 1.0 and figures["default 30 s chunks"][2] > 0.999  # measured 100%, 1.0000
    assert figures["10 s chunks"][0] >= 0.995 and figures["10 s chunks"][1] > 0.995  # measured 99.9%, 0.998-0.999


def test_a_middle_layer_is_computed_without_the_later_blocks(embedder, speech):
    middle = WhisperEmbedder.from_state_dict(random_cfg(layer=1), embedder.encoder.state_dict(), embedder.weights_identity())
    calls = []
    hooks = [block.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, block in enumerate(middle.encoder.blocks)]
    captured = {}
    hooks.append(embedder.encoder.blocks[1].register_forward_hook(lambda m, i, o: captured.setdefault("out", o)))
    try:
        out = middle.embed(speech[: 5 * 24_000])
        assert calls == [0, 1]
        final = embedder.embed(speech[: 5 * 24_000])
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == final.shape == (250, 384)
    assert np.allclose(out, captured["out"][0, :250].numpy(), atol=1e-5)  # block 1's output inside the full forward
    assert cosine(out, final).mean() < 0.9
    with pytest.raises(NarratorError, match=r"'whisper.layer': 4 is out of range: Whisper tiny's encoder has 4 blocks"):
        WhisperEmbedder(random_cfg(layer=4))
    with pytest.raises(ConfigError, match="whisper.model"):
        WhisperConfig(model="huge")


def test_random_weights_are_seeded_warned_saved_and_checked(embedder, tmp_path, caplog, speech):
    with caplog.at_level("WARNING"):
        again = WhisperEmbedder(random_cfg(seed=0))
    assert "Whisper weights: RANDOM init (tiny, seed=0)" in caplog.text
    identity = embedder.weights_identity()
    assert again.weights_identity().sha256 == identity.sha256 == state_dict_sha256(embedder.encoder.state_dict())
    assert WhisperEmbedder(random_cfg(seed=1)).weights_identity().sha256 != identity.sha256
    embedder.save_weights(tmp_path / "whisper.safetensors")
    assert (identity.mode, identity.source, identity.seed, identity.file) == ("random", "random-init tiny seed=0", 0,
                                                                              "whisper.safetensors")
    caplog.clear()
    with caplog.at_level("WARNING"):
        loaded = WhisperEmbedder.from_weights_file(random_cfg(), tmp_path / "whisper.safetensors")
    assert "RANDOM init (tiny, seed=0, built earlier, loaded from" in caplog.text
    assert loaded.weights_identity() == identity
    assert np.array_equal(loaded.embed(speech[:24_000]), embedder.embed(speech[:24_000]))
    other = dataclasses.replace(identity, sha256="0" * 64)
    with pytest.raises(NarratorError, match=r"whisper.safetensors: Whisper weights sha256 .* differ from the 000000000000"):
        WhisperEmbedder.from_weights_file(random_cfg(), tmp_path / "whisper.safetensors", other)
    with pytest.raises(NarratorError, match="whisper.safetensors: the weights do not fit a Whisper encoder of 512 x 6"):
        WhisperEmbedder.from_weights_file(random_cfg(model="base"), tmp_path / "whisper.safetensors", identity)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(NarratorError, match="junk.safetensors: unreadable Whisper weights file"):
        WhisperEmbedder.from_weights_file(random_cfg(), tmp_path / "junk.safetensors", identity)


def test_a_failed_download_names_the_alternatives(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cfg = WhisperConfig(model="base.en", weights=WhisperWeightsConfig(download_root=str(tmp_path)))
    with pytest.raises(NarratorError) as e:
        WhisperEmbedder(cfg)
    message = str(e.value)
    assert message.startswith("https://") and "base.en.pt: Whisper base.en pretrained weights could not be downloaded" in message
    assert "whisper.weights.checkpoint=PATH" in message and "whisper.weights.mode=random" in message and "\n" not in message


def test_a_local_checkpoint_in_whispers_format(embedder, tmp_path, speech):
    dims = WHISPER_ENCODERS["tiny"]
    path = tmp_path / "tiny.pt"
    torch.save({"dims": dict(n_mels=dims.n_mels, n_audio_ctx=1500, n_audio_state=dims.n_state, n_audio_head=dims.n_head,
                             n_audio_layer=dims.n_layer, n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6,
                             n_text_layer=4),
                "model_state_dict": {"encoder." + k: v.half() for k, v in embedder.encoder.state_dict().items()}}, path)
    loaded = WhisperEmbedder(WhisperConfig(model="tiny", weights=WhisperWeightsConfig(checkpoint=str(path))))
    identity = loaded.weights_identity()
    assert (identity.mode, identity.source, identity.seed) == ("pretrained", str(path.resolve()), None)
    assert all(v.dtype == torch.float32 for v in loaded.encoder.state_dict().values())
    assert loaded.embed(speech[:24_000]).shape == (50, 384)
    with pytest.raises(NarratorError, match=r"tiny.pt: its encoder \(384 x 4 layers, 80 mels\) is not Whisper base's"):
        WhisperEmbedder(WhisperConfig(model="base", weights=WhisperWeightsConfig(checkpoint=str(path))))
    for name, content, fault in [("missing.pt", None, "Whisper checkpoint not found"),
                                 ("junk.pt", b"junk", "not a loadable Whisper checkpoint"),
                                 ("state.pt", {"conv1.weight": torch.zeros(1)}, "not in openai-whisper's checkpoint format")]:
        bad = tmp_path / name
        if isinstance(content, bytes):
            bad.write_bytes(content)
        elif content is not None:
            torch.save(content, bad)
        with pytest.raises(NarratorError) as e:
            WhisperEmbedder(WhisperConfig(weights=WhisperWeightsConfig(checkpoint=str(bad))))
        assert str(e.value).startswith(f"{bad}: {fault}") and "\n" not in str(e.value)


# --- real weights (../shared/weights/whisper-tiny.en.pt), skipped where ../shared does not exist ---

real_weights = pytest.mark.skipif(not TINY_EN.is_file(), reason=f"{TINY_EN} not present")


@pytest.fixture(scope="module")
def real_embedder() -> WhisperEmbedder:
    return WhisperEmbedder(WhisperConfig(model="tiny.en", weights=WhisperWeightsConfig(checkpoint=str(TINY_EN))))


@real_weights
def test_real_tiny_en_checkpoint_gives_whispers_own_encoder_output(real_embedder, speech):
    import whisper

    emb = real_embedder.embed(speech[: 12 * 24_000])
    assert emb.shape == (600, 384) and np.isfinite(emb).all()
    model = whisper.load_model(str(TINY_EN), device="cpu")
    audio16 = whisper.pad_or_trim(torch.from_numpy(__import__("soxr").resample(speech[: 12 * 24_000], 24_000, 16_000)))
    with torch.no_grad():
        reference = model.encoder(whisper.log_mel_spectrogram(audio16)[None])[0, :600].numpy()
    assert np.abs(emb - reference).max() < 1e-4


@real_weights
@pytest.mark.skipif(not all((SHARED / "audio" / "clips" / c).is_file() for c in CLIPS), reason="shared clips not present")
def test_real_weights_embed_content_where_random_ones_embed_window_position(real_embedder, embedder):
    """On real speech, most of a random-init encoder's embedding is its window position (the embedding
    of a silent window), a real encoder's mostly content. The relative k-means error is printed too: it
    is LOWER for random weights (their embeddings lie near a one-dimensional curve of positions)."""
    clips = [read_segment(SHARED / "audio" / "clips" / c, 0.0, 1e9) for c in CLIPS]
    silence = np.zeros(30 * 24_000, dtype=np.float32)
    figures = {}
    for name, e in [("real tiny.en", real_embedder), ("random tiny", embedder)]:
        embs = [e.embed(c) for c in clips]
        template = e.embed(silence)
        frames = np.concatenate(embs)
        positions = np.concatenate([template[: len(x)] for x in embs])
        position_share = positions.var(0).sum() / frames.var(0).sum()
        train, held_out = np.concatenate(embs[:3]), np.concatenate(embs[3:])
        kmeans = KMeans(n_clusters=64, n_init=1, random_state=0).fit(train)
        err = ((held_out - kmeans.cluster_centers_[kmeans.predict(held_out)]) ** 2).sum(1).mean() / held_out.var(0).sum()
        figures[name] = (position_share, err)
        print(f"{name}: window position explains {position_share:.0%} of the embedding variance; k-means (k=64, "
              f"{len(train)} frames) relative error on {len(held_out)} held-out frames {err:.3f}")
    assert figures["random tiny"][0] > 0.8 and figures["real tiny.en"][0] < 0.5  # measured 92% and 36%


def test_the_config_knows_every_encoder_size_the_embedder_knows():
    assert set(WHISPER_MODELS) == set(WHISPER_ENCODERS)
