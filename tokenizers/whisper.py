"""Whisper's audio encoder as a feature extractor: 24 kHz audio -> float32 embeddings [frames, D] at 50 Hz.

The embeddings are what the semantic tokens are made of (k-means ids, one per 0.02 s frame). Weights
come from openai-whisper's own download, a local checkpoint in its format, or a seeded random init
(tests and offline demos), identified like EnCodec's by a sha256 over the encoder's state_dict.

The encoder takes exactly 30 s (3000 mel frames, 1500 output frames) and attends over the whole
window. Measured with the real tiny.en weights, a frame's embedding depends far more on where it sits
in its window than on how much audio surrounds it: moving the window by 1 s (5 s) changes the final
embeddings to cosine 0.77 (0.52), while cutting the audio right after the frame (zeros to the window's
end) leaves cosine >= 0.98. Overlapping windows with context therefore cannot make chunked ids agree;
a fixed window position can. Every recording is cut into 30 s encoder windows on its own time line,
[0, 30), [30, 60), ... (no overlap, as whisper itself reads long audio), and a frame is always
embedded in the window of the book that holds it, from whatever of that window's audio its chunk's
context window provides (zeros elsewhere). Chunks of a multiple of 30 s (the default chunking) get
the whole-file embeddings up to resampling at the chunk's edges (k-means ids 100% equal, cosine
>= 0.9998); other chunk lengths see partly zero-filled windows (10 s chunks: 99.9% of ids equal with
random weights, 98.3% with tiny.en) and cost one 30 s encoder pass per window a chunk touches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soxr
import torch
import torch.nn.functional as F
import whisper
from whisper.model import AudioEncoder, ModelDimensions

from narrator.errors import NarratorError
from narrator.tokenizers.audio import n_samples
from narrator.tokenizers.chunking import ChunkSpec
from narrator.tokenizers.config import SAMPLE_RATE, WhisperConfig
from narrator.tokenizers.weights import checked_identity, read_weights, save_weights, state_dict_sha256
from narrator.tokenfolder.manifest import WeightsIdentity

log = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = whisper.audio.SAMPLE_RATE  # 16 kHz
FRAME_RATE = 50  # encoder frames per second: 2 mel frames of 10 ms each
WINDOW_FRAMES = 1500  # encoder frames in one 30 s window
_SAMPLES_24K_PER_FRAME = SAMPLE_RATE // FRAME_RATE  # 480
_SAMPLES_16K_PER_FRAME = WHISPER_SAMPLE_RATE // FRAME_RATE  # 320


@dataclass(frozen=True)
class EncoderDims:
    """The audio-encoder half of whisper's ModelDimensions."""

    n_mels: int
    n_state: int
    n_head: int
    n_layer: int
    n_ctx: int = WINDOW_FRAMES


# Encoder sizes of whisper.available_models(), for random-init builds (a checkpoint brings its own dims).
_TINY, _BASE, _SMALL = EncoderDims(80, 384, 6, 4), EncoderDims(80, 512, 8, 6), EncoderDims(80, 768, 12, 12)
_MEDIUM, _LARGE, _LARGE_V3 = EncoderDims(80, 1024, 16, 24), EncoderDims(80, 1280, 20, 32), EncoderDims(128, 1280, 20, 32)
WHISPER_ENCODERS: dict[str, EncoderDims] = {  # keys: config.WHISPER_MODELS
    "tiny": _TINY, "tiny.en": _TINY, "base": _BASE, "base.en": _BASE, "small": _SMALL, "small.en": _SMALL,
    "medium": _MEDIUM, "medium.en": _MEDIUM, "large-v1": _LARGE, "large-v2": _LARGE,
    "large-v3": _LARGE_V3, "large": _LARGE_V3, "large-v3-turbo": _LARGE_V3, "turbo": _LARGE_V3,
}


@dataclass(frozen=True)
class _Job:
    """One 30 s encoder window of the book, filled from one span's audio, and the frames it gives that span."""

    span: int
    window: int  # k: the window covers book frames [1500 k, 1500 (k + 1))
    take_from: int  # book frames [take_from, take_to) come from it
    take_to: int


def plan_windows(keep_from: int, keep_to: int) -> list[tuple[int, int, int]]:
    """The book's 30 s encoder windows that hold book frames [keep_from, keep_to), as (k, take_from,
    take_to): window k covers book frames [1500 k, 1500 (k + 1))."""
    return [(k, max(keep_from, k * WINDOW_FRAMES), min(keep_to, (k + 1) * WINDOW_FRAMES))
            for k in range(keep_from // WINDOW_FRAMES, (keep_to - 1) // WINDOW_FRAMES + 1)] if keep_to > keep_from else []


class WhisperEmbedder:
    """Whisper's audio encoder (only the encoder is kept), in eval mode on `device`, cut at `cfg.layer`; its
    convolutions and matmuls run in `cfg.precision` (weights and log-mel stay fp32), the embeddings come out fp32."""

    frame_rate = FRAME_RATE
    sample_rate = SAMPLE_RATE  # of the audio it is given; it resamples to 16 kHz itself

    def __init__(self, cfg: WhisperConfig, device: str | torch.device = "cpu"):
        w = cfg.weights
        if w.mode == "random":
            encoder, source = _random_encoder(WHISPER_ENCODERS[cfg.model], w.seed), f"random-init {cfg.model} seed={w.seed}"
            log.warning("Whisper weights: RANDOM init (%s, seed=%d) - embeddings are meaningless for a real model",
                        cfg.model, w.seed)
        elif w.checkpoint is not None:
            encoder, source = _checkpoint_encoder(Path(w.checkpoint), cfg.model), str(Path(w.checkpoint).resolve())
        else:
            encoder, source = _downloaded_encoder(cfg.model, w.download_root), whisper._MODELS[cfg.model]
        identity = WeightsIdentity(mode=w.mode, source=source, sha256=state_dict_sha256(encoder.state_dict()),
                                   seed=w.seed if w.mode == "random" else None)
        self._setup(cfg, encoder, identity, device)

    @classmethod
    def from_weights_file(cls, cfg: WhisperConfig, path: str | Path, identity: WeightsIdentity | None = None,
                          device: str | torch.device = "cpu") -> "WhisperEmbedder":
        """The embedder whose encoder weights were saved to `path` (random weights kept beside their tokens),
        refused unless they are exactly `identity`'s. Without `identity`, they are cfg's random weights."""
        path = Path(path)
        state = read_weights(path, "Whisper")
        if identity is None:
            log.warning("Whisper weights: RANDOM init (%s, seed=%d, built earlier, loaded from %s) - embeddings are "
                        "meaningless for a real model", cfg.model, cfg.weights.seed, path)
        return cls.from_state_dict(cfg, state, identity, device, where=str(path))

    @classmethod
    def from_state_dict(cls, cfg: WhisperConfig, state_dict: dict[str, torch.Tensor], identity: WeightsIdentity | None,
                        device: str | torch.device = "cpu", where: str | None = None) -> "WhisperEmbedder":
        """An embedder with exactly these encoder weights (Ray actors get the driver's: no download, no
        rebuild), refused unless they are `identity`'s. Without `identity`, they are cfg's random weights."""
        encoder = _load_encoder(state_dict, WHISPER_ENCODERS[cfg.model], where or "state_dict")
        identity = checked_identity(state_dict_sha256(encoder.state_dict()), identity,
                                    f"random-init {cfg.model} seed={cfg.weights.seed}", cfg.weights.seed, where, "Whisper")
        self = cls.__new__(cls)
        self._setup(cfg, encoder, identity, device)
        return self

    def save_weights(self, path: str | Path) -> None:
        """Write the encoder's weights as safetensors (atomically) and record the file name in the identity."""
        save_weights(self.encoder.state_dict(), Path(path))
        self._identity.file = Path(path).name

    def _setup(self, cfg: WhisperConfig, encoder: AudioEncoder, identity: WeightsIdentity,
               device: str | torch.device) -> None:
        n_layer = len(encoder.blocks)
        if cfg.layer >= n_layer:
            raise NarratorError(f"'whisper.layer': {cfg.layer} is out of range: Whisper {cfg.model}'s encoder has "
                                f"{n_layer} blocks (0..{n_layer - 1}, or -1 for the final output)")
        self.cfg = cfg
        self.device = torch.device(device)
        self.encoder = encoder.float().eval().to(self.device)
        self.n_mels = encoder.conv1.in_channels
        self._identity = identity

    @property
    def dim(self) -> int:
        return self.encoder.conv1.out_channels

    @property
    def n_layer(self) -> int:
        return len(self.encoder.blocks)

    def weights_identity(self) -> WeightsIdentity:
        return self._identity

    def embed(self, audio: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """A whole recording (float audio [n] at 24 kHz, any length) -> float32 [n // 480, D]:
        frame i covers [0.02 i, 0.02 (i + 1)) s; a tail shorter than one frame is dropped."""
        audio = np.asarray(audio, dtype=np.float32)
        return self._embed_spans([audio], [(0, 0, len(audio) // _SAMPLES_24K_PER_FRAME)], batch_size)[0]

    def embed_chunks(self, windows: Sequence[np.ndarray], specs: Sequence[ChunkSpec], batch_size: int = 4) -> list[np.ndarray]:
        """Embed each chunk from the audio of its context window and keep only the chunk's own frames:
        float32 [50 * (end_s - start_s), D] per chunk, in `specs` order. The encoder windows sit on the
        book's 30 s grid (see the module docstring), whatever the chunking."""
        spans = []
        for audio, spec in zip(windows, specs, strict=True):
            expected = n_samples(spec.ctx_end_s) - n_samples(spec.ctx_start_s)
            if len(audio) != expected:
                raise ValueError(f"{spec.book} chunk {spec.chunk}: window has {len(audio)} samples, expected {expected}")
            spans.append((round(spec.ctx_start_s * FRAME_RATE), round(spec.start_s * FRAME_RATE),
                          round(spec.end_s * FRAME_RATE)))
        return self._embed_spans([np.asarray(a, dtype=np.float32) for a in windows], spans, batch_size)

    def embed_chunk(self, audio_with_context: np.ndarray, spec: ChunkSpec) -> np.ndarray:
        """Embeddings [spec's frames at 50 Hz, D] of one chunk, from the audio of its context window."""
        return self.embed_chunks([audio_with_context], [spec])[0]

    def _embed_spans(self, audios: list[np.ndarray], spans: list[tuple[int, int, int]], batch_size: int) -> list[np.ndarray]:
        """Book frames [keep_from, keep_to) of each span (first_frame, keep_from, keep_to), where the span's
        audio starts at book frame `first_frame`; the encoder windows of all spans are batched together."""
        jobs = [_Job(i, *w) for i, (_, lo, hi) in enumerate(spans) for w in plan_windows(lo, hi)]
        if self.device.type == "cuda":  # every window of the call at once (ray.batch_size chunks) fills a GPU
            batch_size = max(batch_size, len(jobs))
        audio16 = [soxr.resample(a, SAMPLE_RATE, WHISPER_SAMPLE_RATE).astype(np.float32) if len(a) else a for a in audios]
        out = [np.empty((hi - lo, self.dim), dtype=np.float32) for _, lo, hi in spans]
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b: b + batch_size]
            mels = torch.stack([self._log_mel(audio16[j.span], spans[j.span][0], j.window) for j in batch])
            with torch.autocast(self.device.type, enabled=self.cfg.precision != "fp32",
                                dtype=torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16):
                feats = self._encode(mels.to(self.device)).float().cpu().numpy()
            for j, f in zip(batch, feats):
                keep_from, first = spans[j.span][1], j.window * WINDOW_FRAMES
                out[j.span][j.take_from - keep_from: j.take_to - keep_from] = f[j.take_from - first: j.take_to - first]
        return out

    def _log_mel(self, audio16: np.ndarray, first_frame: int, window: int) -> torch.Tensor:
        """Whisper's log-mel [n_mels, 3000] of book window `window`, from the part of it that `audio16`
        (starting at book frame `first_frame`) holds, zeros elsewhere. Computed per window, as
        whisper.pad_or_trim + log_mel_spectrogram do: the clamp to (max - 8) uses the window's own peak."""
        lead = max(0, (first_frame - window * WINDOW_FRAMES) * _SAMPLES_16K_PER_FRAME)  # zeros before the audio
        start = max(0, (window * WINDOW_FRAMES - first_frame) * _SAMPLES_16K_PER_FRAME)
        piece = torch.from_numpy(audio16[start: start + whisper.audio.N_SAMPLES - lead])
        # On the model's device: a GPU actor would otherwise spend more time on the CPU's STFT than in the encoder.
        return whisper.log_mel_spectrogram(whisper.pad_or_trim(F.pad(piece, (lead, 0))), n_mels=self.n_mels,
                                           device=self.device)

    @torch.inference_mode()
    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        """AudioEncoder.forward up to `cfg.layer`: later blocks are never run. [B, n_mels, 3000] -> [B, 1500, D]."""
        enc = self.encoder
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.positional_embedding
        last = self.cfg.layer if self.cfg.layer >= 0 else len(enc.blocks) - 1
        for block in enc.blocks[: last + 1]:
            x = block(x)
        return enc.ln_post(x) if self.cfg.layer == -1 else x


def _encoder_dims(encoder: AudioEncoder) -> EncoderDims:
    return EncoderDims(encoder.conv1.in_channels, encoder.conv1.out_channels, encoder.blocks[0].attn.n_head,
                       len(encoder.blocks), encoder.positional_embedding.shape[0])


def _new_encoder(d: EncoderDims) -> AudioEncoder:
    return AudioEncoder(d.n_mels, d.n_ctx, d.n_state, d.n_head, d.n_layer)


def _random_encoder(dims: EncoderDims, seed: int) -> AudioEncoder:
    """Whisper's encoder with torch's default init from `seed` (LayerNorms at 1/0, as an untrained model)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _new_encoder(dims)


def _load_encoder(state_dict: dict[str, torch.Tensor], dims: EncoderDims, where: str) -> AudioEncoder:
    encoder = _new_encoder(dims)
    try:
        result = encoder.load_state_dict(state_dict, strict=False)
    except RuntimeError:  # a shape mismatch: another model size
        raise NarratorError(f"{where}: the weights do not fit a Whisper encoder of {dims.n_state} x {dims.n_layer} "
                            f"layers, {dims.n_mels} mels (another model size?)") from None
    if result.missing_keys or result.unexpected_keys:
        raise NarratorError(f"{where}: does not fit Whisper's encoder ({len(result.missing_keys)} missing keys, e.g. "
                            f"{result.missing_keys[:1]}; {len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:1]})")
    return encoder.float()


def _checkpoint_encoder(path: Path, model: str) -> AudioEncoder:
    """The encoder of a checkpoint in openai-whisper's format ({"dims", "model_state_dict"}), as float32."""
    if not path.is_file():
        raise NarratorError(f"{path}: Whisper checkpoint not found (whisper.weights.checkpoint)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files that are not tensor archives
        raise NarratorError(f"{path}: not a loadable Whisper checkpoint ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise NarratorError(f"{path}: not in openai-whisper's checkpoint format (a dict with 'dims' and 'model_state_dict')")
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as e:
        raise NarratorError(f"{path}: unreadable Whisper model dims ({e})") from None
    got = EncoderDims(dims.n_mels, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer, dims.n_audio_ctx)
    if got != WHISPER_ENCODERS[model]:
        raise NarratorError(f"{path}: its encoder ({got.n_state} x {got.n_layer} layers, {got.n_mels} mels) is not "
                            f"Whisper {model}'s; set whisper.model to the checkpoint's size")
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint["model_state_dict"].items() if k.startswith(prefix)}
    return _load_encoder(state, got, str(path))


def _downloaded_encoder(model: str, download_root: str | None) -> AudioEncoder:
    url = whisper._MODELS[model]
    try:
        full = whisper.load_model(model, device="cpu", download_root=download_root)
    except Exception as e:  # network, proxy, disk or checksum: all end the same way for the user
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise NarratorError(
            f"{url}: Whisper {model} pretrained weights could not be downloaded ({type(e).__name__}: {first_line}); "
            "set whisper.weights.checkpoint=PATH to a local copy of that file (openai-whisper's .pt), or "
            "whisper.weights.mode=random for offline tests") from None
    return full.encoder.float()
