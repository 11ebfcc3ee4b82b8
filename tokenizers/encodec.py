"""EnCodec 24 kHz as a tokenizer: audio <-> int16 codes [codebooks, frames] at 75 Hz.

Weights come from EnCodec's own download, a local state_dict file, or a seeded random init (tests
and offline demos). Every variant is identified by a sha256 over its state_dict, which the manifest
records and `load_tokenizer` checks, so tokens are never decoded by a codec they were not made with.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from narrator.config import config_hash, from_dict, to_dict
from narrator.errors import NarratorError
from narrator.tokenizers.audio import n_samples
from narrator.tokenizers.chunking import ChunkSpec
from narrator.tokenizers.config import SAMPLE_RATE, EncodecConfig, TokenizeConfig
from narrator.tokenfolder.manifest import ACOUSTIC, StreamInfo, WeightsIdentity
from narrator.tokenizers.weights import checked_identity, read_weights, save_weights, state_dict_sha256

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # encodec imports torchaudio, which warns about its own deprecations
    from encodec import EncodecModel
    from encodec.model import ROOT_URL

log = logging.getLogger(__name__)

PRETRAINED_URL = ROOT_URL + "encodec_24khz-d7cc33bc.th"
STREAM = ACOUSTIC  # the stream EnCodec codes are stored as: shards/acoustic/, "<key>.acoustic.npy"
_FILL_SECONDS = 14.4  # calibration signal for random-mode codebooks: 1080 encoder frames >= 1024 codes


class EncodecTokenizer:
    """One EnCodec 24 kHz model at a fixed bandwidth, in eval mode on `device`."""

    frame_rate = 75
    codebook_size = 1024
    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: EncodecConfig, device: str | torch.device = "cpu"):
        w = cfg.weights
        if w.mode == "random":
            model, source = _random_model(w.seed), f"random-init seed={w.seed}"
            log.warning("EnCodec weights: RANDOM init (seed=%d) - tokens are meaningless for a real model", w.seed)
        elif w.checkpoint is not None:
            model, source = _checkpoint_model(Path(w.checkpoint)), str(Path(w.checkpoint).resolve())
        else:
            model, source = _downloaded_model(), PRETRAINED_URL
        identity = WeightsIdentity(mode=w.mode, source=source, sha256=state_dict_sha256(model.state_dict()),
                                   seed=w.seed if w.mode == "random" else None)
        self._setup(cfg, model, identity, device)

    @classmethod
    def from_weights_file(cls, cfg: EncodecConfig, path: str | Path, identity: WeightsIdentity | None = None,
                          device: str | torch.device = "cpu") -> "EncodecTokenizer":
        """The tokenizer whose weights were saved to `path` (random weights kept beside their tokens),
        refused unless they are exactly `identity`'s. Without `identity`, they are cfg's random weights."""
        path = Path(path)
        state = read_weights(path, "EnCodec")
        if identity is None:
            log.warning("EnCodec weights: RANDOM init (seed=%d, built earlier, loaded from %s) - tokens are meaningless "
                        "for a real model", cfg.weights.seed, path)
        return cls.from_state_dict(cfg, state, identity, device, where=str(path))

    @classmethod
    def from_state_dict(cls, cfg: EncodecConfig, state_dict: dict[str, torch.Tensor], identity: WeightsIdentity | None,
                        device: str | torch.device = "cpu", where: str | None = None) -> "EncodecTokenizer":
        """A tokenizer with exactly these weights (Ray actors get the driver's: no download, no rebuild),
        refused unless they are `identity`'s. Without `identity`, they are cfg's random weights, saved at `where`."""
        model = _new_model()
        model.load_state_dict(state_dict, strict=True)
        identity = checked_identity(state_dict_sha256(model.state_dict()), identity, f"random-init seed={cfg.weights.seed}",
                                    cfg.weights.seed, where, "EnCodec")
        self = cls.__new__(cls)
        self._setup(cfg, model, identity, device)
        return self

    def save_weights(self, path: str | Path) -> None:
        """Write the weights as safetensors (atomically) and record the file name in the identity."""
        save_weights(self.model.state_dict(), Path(path))
        self._identity.file = Path(path).name

    def _setup(self, cfg: EncodecConfig, model: EncodecModel, identity: WeightsIdentity, device: str | torch.device) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model
        self.model.set_target_bandwidth(cfg.bandwidth)
        self.model.eval().to(self.device)
        self._identity = identity

    @property
    def n_codebooks(self) -> int:
        return self.cfg.n_codebooks

    def weights_identity(self) -> WeightsIdentity:
        return self._identity

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32 audio [n] or [B, n] at 24 kHz -> int16 codes [K, T] or [B, K, T], T = ceil(n / 320).

        EncodecModel.encode of the 24 kHz model (one segment, no normalization), with the encoder in
        `cfg.precision` and the quantizer's nearest-code search in fp32 (half-precision distances would
        flip near-ties). fp16 frames keep more codes than bf16 ones, whose mantissa has 3 bits less."""
        x = torch.as_tensor(np.asarray(audio, dtype=np.float32), device=self.device)
        batched = x.ndim == 2
        x = x if batched else x[None]
        half = self.cfg.precision != "fp32"
        with torch.autocast(self.device.type, dtype=torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16,
                            enabled=half):
            frames = self.model.encoder(x[:, None, :])
        codes = self.model.quantizer.encode(frames.float(), self.model.frame_rate, self.model.bandwidth).transpose(0, 1)
        codes = codes.to("cpu", torch.int16).numpy()
        return codes if batched else codes[0]

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [K, T] -> float32 audio [T * 320] at 24 kHz."""
        c = torch.as_tensor(np.asarray(codes, dtype=np.int64), device=self.device)
        return self.model.decode([(c[None], None)])[0, 0].float().cpu().numpy()

    def encode_chunks(self, windows: Sequence[np.ndarray], specs: Sequence[ChunkSpec]) -> list[np.ndarray]:
        """Encode each chunk inside its context window and keep only the chunk's own frames.

        On the CPU each window is encoded on its own: a batch's shape changes the float rounding of the
        convolutions, which moved ~0.7% of the codes, so a chunk's tokens would depend on which chunks
        shared its actor call (`ray.batch_size`, or a rerun that encodes only the missing shards). On a
        GPU, windows of equal length are encoded as one batch for speed, and tokens may then differ in
        the last bits with the grouping.
        """
        groups: dict[int, list[int]] = {}
        for i, (audio, spec) in enumerate(zip(windows, specs, strict=True)):
            expected = n_samples(spec.ctx_end_s) - n_samples(spec.ctx_start_s)
            if len(audio) != expected:
                raise ValueError(f"{spec.book} chunk {spec.chunk}: window has {len(audio)} samples, expected {expected}")
            groups.setdefault(expected if self.device.type == "cuda" else i, []).append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(specs)
        for idx in groups.values():
            codes = self.encode(np.stack([windows[i] for i in idx]))
            for row, i in zip(codes, idx):
                spec = specs[i]
                assert row.shape[1] == spec.trim_left + spec.frames + spec.trim_right, (row.shape, spec)
                out[i] = np.ascontiguousarray(row[:, spec.trim_left: spec.trim_left + spec.frames])
        return out

    def encode_chunk(self, audio_with_context: np.ndarray, spec: ChunkSpec) -> np.ndarray:
        """Codes [K, spec.frames] of one chunk, from the audio of its context window."""
        return self.encode_chunks([audio_with_context], [spec])[0]


def token_config(tcfg: TokenizeConfig) -> dict:
    """The part of the config that decides the tokens (not where or how fast they are computed).

    The precision is recorded when it is not fp32, so folders made before it existed keep their hash."""
    config = {"encodec": to_dict(tcfg.encodec), "chunking": to_dict(tcfg.chunking)}
    if config["encodec"]["precision"] == "fp32":
        del config["encodec"]["precision"]
    return config


def token_config_hash(tcfg: TokenizeConfig) -> str:
    """Hash of `token_config` without the checkpoint's path: the weights are identified by their sha256,
    so moving the file changes nothing."""
    config = token_config(tcfg)
    config["encodec"]["weights"].pop("checkpoint")
    return config_hash(config)


def stream_info(tcfg: TokenizeConfig, tokenizer: EncodecTokenizer | None = None) -> StreamInfo:
    """What a manifest records about the acoustic stream; builds the tokenizer unless it is given."""
    tokenizer = tokenizer or EncodecTokenizer(tcfg.encodec)
    return StreamInfo(
        name=STREAM, kind="encodec", sample_rate=SAMPLE_RATE, frame_rate=float(tokenizer.frame_rate),
        n_codebooks=tokenizer.n_codebooks, codebook_size=tokenizer.codebook_size, config=token_config(tcfg),
        config_hash=token_config_hash(tcfg), weights=tokenizer.weights_identity(), bandwidth=tcfg.encodec.bandwidth,
    )


def random_weights_name(seed: int) -> str:
    """File name of random-init weights kept in a token folder (and in checkpoints trained on it)."""
    return f"encodec_random_seed{seed}.safetensors"


def load_tokenizer(info: StreamInfo, device: str | torch.device = "cpu", checkpoint: str | None = None,
                   weights_dirs: Sequence[str | Path] = ()) -> EncodecTokenizer:
    """Rebuild the tokenizer a manifest was made with and refuse it if the weights are not the same.

    Random-init weights are never rebuilt from their seed (the rebuild runs the encoder, whose float
    rounding differs between CPUs and thread counts): they are loaded from the file kept beside the
    tokens, looked up in `weights_dirs`. A pretrained checkpoint file may have moved: `checkpoint`.
    """
    if info.kind != "encodec":
        raise NarratorError(f"tokenizer kind {info.kind!r} is not 'encodec'")
    cfg = from_dict(EncodecConfig, info.config["encodec"], "encodec.")
    if info.weights.mode == "random":
        if not info.weights.file:
            raise NarratorError(f"{info.weights.source}: the tokens' random-init weights were not kept with them; re-tokenize")
        candidates = [Path(d) / info.weights.file for d in weights_dirs]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise NarratorError(f"{info.weights.file}: the random-init EnCodec weights the tokens were made with are in none "
                                f"of {', '.join(str(d) for d in weights_dirs) or 'the given folders'}")
        return EncodecTokenizer.from_weights_file(cfg, found, info.weights, device)
    if checkpoint is not None:
        cfg.weights.checkpoint = checkpoint
    tokenizer = EncodecTokenizer(cfg, device)
    got = tokenizer.weights_identity()
    if got.sha256 != info.weights.sha256:
        raise NarratorError(f"{got.source}: EnCodec weights sha256 {got.sha256[:12]} differ from the "
                            f"{info.weights.sha256[:12]} the tokens were made with ({info.weights.source})")
    return tokenizer


def synthetic_speech(seconds: float, seed: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A speech-like float64 signal made from `seed` alone: voiced syllables with a gliding pitch and
    formants, noise bursts (fricatives) and pauses. Peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n)
    pos = 0
    while pos < n:
        m = min(int(rng.uniform(0.06, 0.3) * sample_rate), n - pos)
        kind = rng.choice(3, p=[0.6, 0.25, 0.15])  # voiced, fricative, pause
        window = np.hanning(m)
        if kind == 0:
            f0 = np.linspace(rng.uniform(80, 240), rng.uniform(80, 240), m)
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            formants = rng.uniform([250, 800, 2200], [900, 2400, 3400])
            harmonics = np.arange(1, int(4000 / f0.max()) + 1)
            freqs = harmonics * f0.mean()
            amps = sum(np.exp(-0.5 * ((freqs - f) / 150.0) ** 2) for f in formants) / harmonics**0.5
            seg = (amps[:, None] * np.sin(harmonics[:, None] * phase[None])).sum(0)
            out[pos: pos + m] = seg / (np.abs(seg).max() + 1e-9) * rng.uniform(0.3, 1.0) * window
        elif kind == 1:
            noise = np.diff(rng.standard_normal(m + 1))  # differenced noise: a high-passed hiss
            out[pos: pos + m] = noise / np.abs(noise).max() * rng.uniform(0.05, 0.3) * window
        pos += m
    out += 1e-4 * rng.standard_normal(n)
    return 0.5 * out / np.abs(out).max()


def _new_model() -> EncodecModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        return EncodecModel.encodec_model_24khz(pretrained=False)


def _downloaded_model() -> EncodecModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return EncodecModel.encodec_model_24khz(pretrained=True)
    except Exception as e:  # network, proxy, disk or checksum: all end the same way for the user
        raise NarratorError(
            f"{PRETRAINED_URL}: EnCodec pretrained weights could not be downloaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set encodec.weights.checkpoint=PATH to a local copy "
            "of that file, or encodec.weights.mode=random for offline tests") from None


def _checkpoint_model(path: Path) -> EncodecModel:
    if not path.is_file():
        raise NarratorError(f"{path}: EnCodec checkpoint not found (encodec.weights.checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for files that are not tensor archives
        raise NarratorError(f"{path}: not a loadable state_dict file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NarratorError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    model = _new_model()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise NarratorError(f"{path}: does not fit EnCodec 24 kHz ({len(result.missing_keys)} missing keys, e.g. "
                            f"{result.missing_keys[:1]}; {len(result.unexpected_keys)} unexpected, e.g. {result.unexpected_keys[:1]})")
    return model


def _random_model(seed: int) -> EncodecModel:
    """A reproducible random EnCodec whose codebooks are usable.

    Random init leaves the codebooks at zero (EnCodec initializes them by k-means on the first
    training batch), so every code would be 0. Each level is filled instead with encoder frames of a
    seeded synthetic signal. Those frames come from a float forward pass whose rounding depends on the
    CPU's kernels and thread count, so two machines may build different weights from one seed: the
    weights are built once per token folder, saved in it, and loaded from there ever after.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = _new_model()
        signal = torch.from_numpy(synthetic_speech(_FILL_SECONDS, seed)).float()
        frames = model.encoder(signal[None, None])[0].T  # [T, D]
        # A random encoder's frames share one large offset (~100x their spread), which leaves the
        # quantizer choosing between near-ties. Move it into the last bias.
        offset = frames.mean(dim=0)
        model.encoder.model[-1].conv.conv.bias.sub_(offset)
        frames = frames - offset
        generator = torch.Generator().manual_seed(seed)
        residual = frames
        for layer in model.quantizer.vq.layers:
            book = layer._codebook
            picked = torch.randperm(len(residual), generator=generator)[: book.codebook_size]
            embed = residual[picked]
            dist = torch.cdist(residual, embed)
            # Leave-one-out: a frame that became a code may not quantize to itself, or the next
            # level would see mostly zero residuals.
            dist[picked, torch.arange(len(picked))] = torch.inf
            residual = residual - embed[dist.argmin(dim=1)]
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.inited.fill_(1.0)
    return model
