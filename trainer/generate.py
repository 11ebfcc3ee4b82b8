"""`narrator generate`: continue a recording in the narrator's voice.

The prompt is encoded with the very tokenizer the model was trained on (rebuilt from the
checkpoint's streams.json and checked against its weights checksum), laid out as the trainer saw it,
continued by the GPT, and decoded back to audio with EnCodec. Where the model samples a boundary
frame (it saw one between recordings in training), the audio gets a short silence instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import yaml

from narrator.config import save_config
from narrator.errors import NarratorError
from narrator.streaming.layout import LAYOUTS, Layout, make_layout
from narrator.tokenfolder import storage
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.chunking import grid_steps
from narrator.tokenizers.encodec import EncodecTokenizer, load_tokenizer
from narrator.tokenfolder.manifest import ACOUSTIC, SEMANTIC, SLOT_SECONDS, StreamInfo
from narrator.trainer.checkpoint import CheckpointMeta, layout_name, load_for_inference
from narrator.trainer.model import GPT, GPTConfig


@dataclass
class GenerateConfig:
    checkpoint: str = ""  # training output folder (its latest checkpoint) or one checkpoint folder
    prompt: str = ""  # audio file; its first prompt_seconds are the prompt
    prompt_seconds: float = 3.0
    seconds: float = 10.0  # audio to generate after the prompt
    out: str = "runs/sample.wav"
    include_prompt: bool = True  # the wav starts with the (re-synthesized) prompt
    temperature: float = 1.0
    top_k: int | None = 250
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    semantic_checkpoint: str = ""  # two-stage generation: this `semantic` model, then --checkpoint's `prefix` model


BOUNDARY_SILENCE_S = 0.25  # audio for one sampled boundary frame


def tokens_to_audio(tokens: np.ndarray, layout: Layout, decode: Callable[[np.ndarray], np.ndarray],
                    sample_rate: int) -> tuple[np.ndarray, int]:
    """Tokens -> (mono float audio, boundaries sampled): the acoustic codes of each run between
    boundaries decoded, a short silence per boundary."""
    runs = [run[ACOUSTIC] for run in layout.decode(tokens)]
    silence = np.zeros(round(BOUNDARY_SILENCE_S * sample_rate), np.float32)
    parts = []
    for i, codes in enumerate(runs):
        if i:
            parts.append(silence)
        if codes.shape[1]:
            parts.append(np.asarray(decode(codes), np.float32).reshape(-1))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), len(runs) - 1


def continue_tokens(model: GPT, prompt: torch.Tensor, new_tokens: int, layout: Layout, temperature: float,
                    top_k: int | None, seed: int) -> np.ndarray:
    """The prompt's tokens [T] (on the model's device) and `new_tokens` sampled after them.

    Samples are drawn from a generator of their own, seeded with `seed`: the global RNG (a training
    run's dropout) is untouched. Past block_size the context moves in whole units, as training
    windows start on one (GPT.generate).
    """
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    return model.generate(prompt[None], new_tokens, temperature=temperature, top_k=top_k, generator=generator,
                          align=layout.unit_tokens)[0].cpu().numpy()


def load_codec(info: StreamInfo, device: str | torch.device, weights_dirs: list[storage.Location]) -> EncodecTokenizer:
    """The EnCodec an acoustic stream was made with, its weights checked against the stream's record.

    Random-init weights are read from the first of `weights_dirs` (checkpoint or token folders, local
    or URLs) that keeps their file; pretrained ones come the usual way (download or local checkpoint).
    """
    if "encodec" not in info.config:
        raise NarratorError(f"stream {info.name!r} (config_hash {info.config_hash}) records no EnCodec config to "
                            "decode its codes with")
    file = info.weights.file if info.weights.mode == "random" else None
    local = [Path(d) for d in weights_dirs if not storage.is_url(d)]
    if file and not any((d / file).is_file() for d in local):  # a token folder in an object store
        for url in (storage.join(d, file) for d in weights_dirs if storage.is_url(d)):
            if storage.exists(url):
                with storage.local_copy(url) as copy:
                    return load_tokenizer(info, device=str(device), weights_dirs=[copy.parent])
    return load_tokenizer(info, device=str(device), weights_dirs=local)


def checkpoint_layout(meta: CheckpointMeta, model_cfg: GPTConfig) -> Layout:
    """The layout a checkpoint was trained with, refused unless its vocabulary and special tokens match the model's."""
    name = layout_name(meta.state.layout)
    streams = {s.name: s for s in meta.streams}
    layout = make_layout(meta.state.layout, {s: (streams[s].n_codebooks, streams[s].codebook_size) for s in LAYOUTS[name]},
                         shared_vocab=meta.state.shared_vocab, dedup_semantic=meta.state.dedup_semantic)
    if layout.vocab_size != model_cfg.vocab_size:
        raise NarratorError(f"{meta.path}: model vocab {model_cfg.vocab_size} does not match its tokenizer's "
                            f"layout (vocab {layout.vocab_size})")
    if layout.boundary_token != meta.state.boundary_token:
        raise NarratorError(f"{meta.path}: trained with boundary token {meta.state.boundary_token}, but its layout "
                            f"gives {layout.boundary_token}")
    if layout.special.separator != meta.state.separator_token:
        raise NarratorError(f"{meta.path}: trained with separator token {meta.state.separator_token}, but its layout "
                            f"gives {layout.special.separator}")
    return layout


def generate_two_stage(cfg: GenerateConfig, device: torch.device, coarse: tuple) -> Path:
    """AudioLM's two stages: a `semantic` model continues the prompt's semantic ids, then a `prefix` model
    turns windows of them into acoustic tokens (each window's first half given: the acoustic frames
    already made), and EnCodec decodes those to audio."""
    prefix_model, prefix_cfg, prefix_meta = coarse
    semantic_model, semantic_cfg, semantic_meta = load_for_inference(Path(cfg.semantic_checkpoint), device)
    for meta, wanted, flag in ((prefix_meta, "prefix", "--checkpoint"), (semantic_meta, "semantic", "--semantic-checkpoint")):
        if layout_name(meta.state.layout) != wanted:
            raise NarratorError(f"{meta.path}: {flag} must be a {wanted!r} model, this one has layout {meta.state.layout!r}")
    if semantic_meta.state.dedup_semantic:
        raise NarratorError(f"{semantic_meta.path}: trained with data.dedup_semantic: its ids hold no durations, and the "
                            "prefix model needs 50 Hz ids; give a semantic model trained without it")
    prefix, semantic_layout = checkpoint_layout(prefix_meta, prefix_cfg), checkpoint_layout(semantic_meta, semantic_cfg)
    ids_a, ids_b = prefix_meta.stream(SEMANTIC), semantic_meta.stream(SEMANTIC)
    if ids_a.config_hash != ids_b.config_hash:
        raise NarratorError(f"{semantic_meta.path}: trained on semantic ids config_hash {ids_b.config_hash}, but "
                            f"{prefix_meta.path} on {ids_a.config_hash}: both stages need the same semantic tokens")
    from narrator.tokenizers.semantic import load_semantic_tokenizer  # Whisper: not imported by the trainer

    info = prefix_meta.stream(ACOUSTIC)
    weights_dirs = [prefix_meta.path, *token_folder(prefix_meta.path)]
    codec = load_codec(info, device, weights_dirs)
    semantic = load_semantic_tokenizer(ids_a, str(device), weights_dirs)

    audio_info = probe(cfg.prompt)
    prompt_slots = grid_steps(min(cfg.prompt_seconds, audio_info.duration_s))
    prompt_audio = read_segment(audio_info, 0.0, prompt_slots * SLOT_SECONDS)
    codes = codec.encode(prompt_audio).astype(np.int64)  # [K, 3 * prompt_slots]
    ids = semantic.assigner.assign(semantic.embedder.embed(prompt_audio)).astype(np.int64)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def sample(model, tokens: np.ndarray, count: int, align: int = 1) -> np.ndarray:
        idx = torch.from_numpy(tokens).long()[None].to(device)
        out = model.generate(idx, count, temperature=cfg.temperature, top_k=cfg.top_k, generator=generator, align=align)
        return out[0].cpu().numpy()

    # Stage 1: semantic ids, up to the first boundary the model samples (the recording ends there).
    new_slots = grid_steps(cfg.seconds)
    tokens = sample(semantic_model, semantic_layout.encode({SEMANTIC: ids}), new_slots * semantic_layout.unit_tokens,
                    semantic_layout.unit_tokens)
    ids = semantic_layout.decode(tokens)[0][SEMANTIC]
    total = len(ids) // 2
    # Stage 2: acoustic frames window by window, half of each window given as acoustic context. A window
    # fits block_size, so its context never moves and the prefix layout's arrangement stays whole.
    n = prefix.slots_for(prefix_cfg.block_size)
    k = info.n_codebooks
    done = prompt_slots
    while done < total:
        start = done - min(done, n // 2)
        end = min(start + n, total)
        window = prefix.prompt(ids[2 * start: 2 * end], codes[:, 3 * start: 3 * done])
        made = prefix.decode(sample(prefix_model, window, 3 * (end - done) * k))[0][ACOUSTIC]
        new = made[:, 3 * (done - start): 3 * (end - start)]
        if new.shape[1] < 3 * (end - done):  # the model sampled a boundary: the audio ends there
            codes = np.concatenate([codes, new[:, : new.shape[1] // 3 * 3]], axis=1)
            break
        codes = np.concatenate([codes, new], axis=1)
        done = end
    if not cfg.include_prompt:
        codes = codes[:, 3 * prompt_slots:]
    audio = codec.decode(codes)
    return _write(cfg, audio, info.sample_rate, f"{prompt_slots * SLOT_SECONDS:.1f} s prompt from {cfg.prompt}, "
                  f"{len(ids) // 2 * SLOT_SECONDS - prompt_slots * SLOT_SECONDS:.1f} s of semantic ids continued by "
                  f"{semantic_meta.path} and made audible by {prefix_meta.path}")


def token_folder(checkpoint: Path) -> list[Path]:
    """The token folder the checkpoint was trained on, if its config still names one that exists."""
    try:
        manifest = Path(yaml.safe_load((checkpoint / "config.yaml").read_text())["data"]["manifest"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    folder = manifest if manifest.is_dir() else manifest.parent
    return [folder] if folder.is_dir() else []


def generate(cfg: GenerateConfig) -> Path:
    if not cfg.checkpoint or not cfg.prompt:
        raise NarratorError("generate needs --checkpoint and --prompt")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    checkpoint = Path(cfg.checkpoint)
    model, model_cfg, meta = load_for_inference(checkpoint, device)
    if cfg.semantic_checkpoint:
        return generate_two_stage(cfg, device, (model, model_cfg, meta))
    name = layout_name(meta.state.layout)
    if name not in ("flat", "interleaved"):
        raise NarratorError(f"{checkpoint}: layout {meta.state.layout!r} generates in two stages: give the prefix model "
                            "as --checkpoint and the semantic model as --semantic-checkpoint")
    layout = checkpoint_layout(meta, model_cfg)
    if 2 * layout.unit_tokens > model_cfg.block_size:  # past block_size the context keeps the newest half, in units
        raise NarratorError(f"{meta.path}: block_size {model_cfg.block_size} holds less than two units of "
                            f"{layout.unit_tokens} tokens; too short to generate from")
    streams = {s.name: s for s in meta.streams}
    info = streams[ACOUSTIC]
    weights_dirs = [meta.path, *token_folder(meta.path)]
    tokenizer = load_codec(info, device, weights_dirs)

    # The prompt, in whole 40 ms slots, as the model saw tokens: every stream of its layout.
    audio_info = probe(cfg.prompt)
    slots = grid_steps(min(cfg.prompt_seconds, audio_info.duration_s))
    prompt_seconds = slots * SLOT_SECONDS
    prompt_audio = read_segment(audio_info, 0.0, prompt_seconds)
    prompt_streams = {ACOUSTIC: tokenizer.encode(prompt_audio)}
    if SEMANTIC in LAYOUTS[name]:
        from narrator.tokenizers.semantic import load_semantic_tokenizer  # Whisper: not imported by the trainer

        semantic = load_semantic_tokenizer(streams[SEMANTIC], str(device), weights_dirs)
        prompt_streams[SEMANTIC] = semantic.assigner.assign(semantic.embedder.embed(prompt_audio)).astype(np.int64)
    prompt_tokens = torch.from_numpy(layout.encode(prompt_streams)).long().to(device)

    new_tokens = grid_steps(cfg.seconds) * layout.slot_tokens
    tokens = continue_tokens(model, prompt_tokens, new_tokens, layout, cfg.temperature, cfg.top_k, cfg.seed)
    if not cfg.include_prompt:
        tokens = tokens[len(prompt_tokens):]
    audio, boundaries = tokens_to_audio(tokens, layout, tokenizer.decode, info.sample_rate)
    if boundaries:
        print(f"the model sampled {boundaries} recording boundar{'y' if boundaries == 1 else 'ies'}: "
              f"{BOUNDARY_SILENCE_S:g} s of silence each")

    return _write(cfg, audio, info.sample_rate, f"{prompt_seconds:.1f} s prompt from {cfg.prompt} + {cfg.seconds:.1f} s "
                  f"generated at step {meta.state.step}, weights {info.weights.mode}")


def _write(cfg: GenerateConfig, audio: np.ndarray, sample_rate: int, what: str) -> Path:
    """The wav (written under a temporary name, then renamed) and the resolved config beside it."""
    out = write_wav(Path(cfg.out), audio, sample_rate)
    save_config(cfg, out.with_suffix(".yaml"))
    print(f"wrote {out}: {len(audio) / sample_rate:.1f} s ({what})")
    return out


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM, written under a temporary name and renamed: a reader never sees half a file. A full disk
    (or file-size limit) is one NarratorError naming the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    except Exception as e:  # libsndfile reports a full disk without its errno
        tmp.unlink(missing_ok=True)
        reason = storage.write_fault(e, tmp)
        if reason is None:
            raise
        raise NarratorError(f"{path}: cannot write the audio ({reason})") from None
    tmp.replace(path)
    return path
