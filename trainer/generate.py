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
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.chunking import grid_steps
from narrator.tokenizers.encodec import load_tokenizer
from narrator.tokenizers.manifest import ACOUSTIC, SEMANTIC, SLOT_SECONDS
from narrator.tokenizers.semantic import load_semantic_tokenizer
from narrator.trainer.checkpoint import layout_name, load_for_inference


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
    checkpoint, out = Path(cfg.checkpoint), Path(cfg.out)
    model, model_cfg, meta = load_for_inference(checkpoint, device)
    name = layout_name(meta.state.layout)
    if name not in ("flat", "interleaved"):
        raise NarratorError(f"{checkpoint}: layout {meta.state.layout!r} generates in two stages (a semantic model, then "
                            "a prefix model), which is not built yet; flat and interleaved checkpoints generate")
    streams = {s.name: s for s in meta.streams}
    layout = make_layout(meta.state.layout, {s: (streams[s].n_codebooks, streams[s].codebook_size) for s in LAYOUTS[name]},
                         shared_vocab=meta.state.shared_vocab)
    if layout.vocab_size != model_cfg.vocab_size:
        raise NarratorError(f"{checkpoint}: model vocab {model_cfg.vocab_size} does not match its tokenizer's "
                            f"layout (vocab {layout.vocab_size})")
    if layout.boundary_token != meta.state.boundary_token:
        raise NarratorError(f"{checkpoint}: trained with boundary token {meta.state.boundary_token}, but its layout "
                            f"gives {layout.boundary_token}")
    if layout.special.separator != meta.state.separator_token:
        raise NarratorError(f"{checkpoint}: trained with separator token {meta.state.separator_token}, but its layout "
                            f"gives {layout.special.separator}")
    info = streams[ACOUSTIC]
    weights_dirs = [meta.path, *token_folder(meta.path)]
    tokenizer = load_tokenizer(info, device=str(device), weights_dirs=weights_dirs)

    # The prompt, in whole 40 ms slots, as the model saw tokens: every stream of its layout.
    audio_info = probe(cfg.prompt)
    slots = grid_steps(min(cfg.prompt_seconds, audio_info.duration_s))
    prompt_seconds = slots * SLOT_SECONDS
    prompt_audio = read_segment(audio_info, 0.0, prompt_seconds)
    prompt_streams = {ACOUSTIC: tokenizer.encode(prompt_audio)}
    if SEMANTIC in LAYOUTS[name]:
        semantic = load_semantic_tokenizer(streams[SEMANTIC], str(device), weights_dirs)
        prompt_streams[SEMANTIC] = semantic.assigner.assign(semantic.embedder.embed(prompt_audio)).astype(np.int64)
    prompt_tokens = torch.from_numpy(layout.encode(prompt_streams)).long()[None].to(device)

    new_tokens = grid_steps(cfg.seconds) * layout.slot_tokens
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    tokens = model.generate(prompt_tokens, new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                            generator=generator)[0].cpu().numpy()
    if not cfg.include_prompt:
        tokens = tokens[prompt_tokens.shape[1]:]
    audio, boundaries = tokens_to_audio(tokens, layout, tokenizer.decode, info.sample_rate)
    if boundaries:
        print(f"the model sampled {boundaries} recording boundar{'y' if boundaries == 1 else 'ies'}: "
              f"{BOUNDARY_SILENCE_S:g} s of silence each")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    sf.write(tmp, np.clip(audio, -1.0, 1.0), info.sample_rate, subtype="PCM_16")
    tmp.replace(out)
    save_config(cfg, out.with_suffix(".yaml"))
    print(f"wrote {out}: {len(audio) / info.sample_rate:.1f} s ({prompt_seconds:.1f} s prompt from {cfg.prompt} "
          f"+ {cfg.seconds:.1f} s generated at step {meta.state.step}, weights {info.weights.mode})")
    return out
