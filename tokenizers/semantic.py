"""The semantic stream (AudioLM-style): Whisper encoder frames at 50 Hz, each replaced by the id of its
nearest k-means centroid.

The centroids are fit once per token folder, on a sample of frames from every book that never
touches a validation frame (kmeans.py), before any chunk is tokenized; the ids are then assigned in
the same Ray actors, from the same audio reads, as the EnCodec codes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from narrator.config import config_hash, from_dict, to_dict
from narrator.errors import NarratorError
from narrator.tokenizers.audio import probe, read_segment
from narrator.tokenizers.chunking import ChunkSpec
from narrator.tokenizers.config import SAMPLE_RATE, TokenizeConfig, WhisperConfig
from narrator.tokenizers.kmeans import (EmbeddingSource, FrameProbe, KmeansModel, SamplePlan, compare_layers, fit_or_load,
                                        format_table, kmeans_paths, load_kmeans)
from narrator.tokenfolder.manifest import SEMANTIC, StreamInfo
from narrator.tokenizers.whisper import FRAME_RATE, WINDOW_FRAMES, WhisperEmbedder

KMEANS_STEM = "kmeans/semantic"  # in the token folder: kmeans/semantic.json, .npy


class SemanticTokenizer:
    """Whisper embedder + k-means assigner: int16 ids [frames] at 50 Hz for each chunk."""

    frame_rate = FRAME_RATE

    def __init__(self, embedder: WhisperEmbedder, kmeans: KmeansModel, device: str | torch.device = "cpu"):
        self.embedder = embedder
        self.kmeans = kmeans
        self.assigner = kmeans.assigner(device)

    def encode_chunks(self, windows: Sequence[np.ndarray], specs: Sequence[ChunkSpec]) -> list[np.ndarray]:
        """Ids of each chunk's own frames, from the 24 kHz audio of its context window (as EncodecTokenizer takes)."""
        return [self.assigner.assign(e).astype(np.int16) for e in self.embedder.embed_chunks(windows, specs)]


def embedding_source(embedder: WhisperEmbedder) -> EmbeddingSource:
    cfg = embedder.cfg
    return EmbeddingSource(model=cfg.model, layer=cfg.layer, dims=embedder.dim, weights_sha256=embedder.weights_identity().sha256)


def fit_semantic(cfg: TokenizeConfig, out: Path, embedder: WhisperEmbedder, books: Sequence[tuple[str, str, int]],
                 held_out: dict[str, tuple[int, int]]) -> tuple[KmeansModel, bool]:
    """The folder's k-means (fit now on a sample of `books` (id, source, 40 ms slots), or loaded), and whether it was fit.

    `held_out` gives each book's validation slots; no frame in them is sampled.
    """
    frames = [(book, 2 * slots) for book, _, slots in books]
    validation = {book: (2 * a, 2 * b) for book, (a, b) in held_out.items() if b > a}
    sources = {book: source for book, source, _ in books}

    def embed(plan: SamplePlan) -> Iterator[tuple[str, int, np.ndarray]]:
        """Embeddings of each 30 s book window that holds sampled frames (windows on the book's own timeline)."""
        for sample in plan.books:
            info = probe(sources[sample.id])
            for window in np.unique(sample.frames // WINDOW_FRAMES):
                start = int(window) * WINDOW_FRAMES
                audio = read_segment(info, start / FRAME_RATE, (start + WINDOW_FRAMES) / FRAME_RATE)
                yield sample.id, start, embedder.embed(audio)

    return fit_or_load(cfg.kmeans, embedding_source(embedder), out / KMEANS_STEM, frames, validation, embed)


def semantic_config(tcfg: TokenizeConfig) -> dict:
    """The part of the config that decides the ids (not where files live)."""
    config = {"whisper": to_dict(tcfg.whisper), "kmeans": to_dict(tcfg.kmeans), "chunking": to_dict(tcfg.chunking)}
    for key in ("checkpoint", "download_root"):
        config["whisper"]["weights"].pop(key)
    if config["whisper"]["precision"] == "fp32":  # recorded when not fp32: older folders keep their config
        del config["whisper"]["precision"]
    config["kmeans"].pop("path")
    return config


def semantic_stream_info(tcfg: TokenizeConfig, tokenizer: SemanticTokenizer, out: Path) -> StreamInfo:
    """What a manifest records about the semantic stream, k-means provenance included."""
    meta = tokenizer.kmeans.meta
    config = semantic_config(tcfg)
    config["kmeans_centroids_sha256"] = meta.centroids.sha256  # the ids depend on the fitted centroids
    return StreamInfo(
        name=SEMANTIC, kind="whisper-kmeans", sample_rate=SAMPLE_RATE, frame_rate=float(FRAME_RATE), n_codebooks=1,
        codebook_size=meta.k, config=config, config_hash=config_hash(config),
        weights=tokenizer.embedder.weights_identity(),
        kmeans={"file": KMEANS_STEM + ".json", "files": [str(p.relative_to(out)) for p in kmeans_paths(out / KMEANS_STEM)
                                                          if p.is_file()], "k": meta.k, "dims": meta.dims, "layer": meta.source.layer,
                "centroids_sha256": meta.centroids.sha256, "sample_frames": meta.sample.fit_frames,
                "relative_error_heldout": meta.quality_heldout.relative_error if meta.quality_heldout else None,
                "perplexity_heldout": meta.quality_heldout.perplexity if meta.quality_heldout else None},
    )


def kmeans_report(tcfg: TokenizeConfig, sources: Sequence[str], layers: Sequence[int], ks: Sequence[int],
                  max_seconds: float, standardize: Sequence[bool] | None = None, measure: FrameProbe | None = None) -> str:
    """`narrator kmeans-report`: k-means of several encoder layers, k and standardizations on up to `max_seconds` of
    the given audio, as tables, so a layer is chosen from numbers (WhisperSpeech found the final layer keeps
    little). Frames are held out in whole seconds. `standardize` None: `kmeans.standardize`. With a `measure`
    (evaluation/abx.py), what the ids and the embeddings carry of its audio is measured beside the error."""
    embedder = WhisperEmbedder(tcfg.whisper)
    state = embedder.encoder.state_dict()
    audio = []
    left = max_seconds
    for source in sources:
        info = probe(source)
        seconds = min(info.duration_s, left)
        audio.append(read_segment(info, 0.0, seconds))
        left -= seconds
        if left <= 0:
            break
    frames, measure_frames = {}, {}
    for layer in layers:
        cfg = replace(tcfg.whisper, layer=layer)
        at_layer = WhisperEmbedder.from_state_dict(cfg, state, embedder.weights_identity())
        name = "final" if layer == -1 else str(layer)
        frames[name] = np.concatenate([at_layer.embed(a) for a in audio])
        if measure is not None:
            measure_frames[name] = at_layer.embed(measure.audio)
    total = sum(len(a) for a in audio) / SAMPLE_RATE
    lines = [f"Whisper {tcfg.whisper.model} ({embedder.weights_identity().mode} weights), {total:.0f} s of audio from "
             f"{len(audio)} files; relative error = squared distance to the nearest centroid / variance (0 keeps "
             "everything, 1 keeps nothing), measured on held-out seconds"]
    if measure is not None:
        lines.append(measure.description)
    for z in (tcfg.kmeans.standardize,) if standardize is None else standardize:
        rows = compare_layers(frames, ks, seed=tcfg.kmeans.seed, cfg=replace(tcfg.kmeans, standardize=z),
                              probe=measure, probe_frames=measure_frames)
        lines += [f"standardize={str(z).lower()}", format_table(rows)]
    return "\n".join(lines)


def load_semantic_tokenizer(info: StreamInfo, device: str | torch.device = "cpu",
                            weights_dirs: Sequence[str | Path] = ()) -> SemanticTokenizer:
    """Rebuild the semantic tokenizer a stream was made with (for generate's prompt): its Whisper
    encoder (random weights from the file kept with the tokens) and its k-means centroids, found in
    `weights_dirs` (a checkpoint holds them flat, a token folder under kmeans/), each checked by sha256."""
    def find(rel: str) -> Path:
        for folder in weights_dirs:
            for path in (Path(folder) / rel, Path(folder) / Path(rel).name):
                if path.is_file():
                    return path
        raise NarratorError(f"{rel}: needed to rebuild the semantic tokenizer, but in none of "
                            f"{', '.join(str(d) for d in weights_dirs) or 'the given folders'}")

    cfg = from_dict(WhisperConfig, info.config["whisper"], "whisper.")
    if info.weights.mode == "random":
        embedder = WhisperEmbedder.from_weights_file(cfg, find(info.weights.file), info.weights, device)
    else:
        if Path(info.weights.source).is_file():  # a local checkpoint, where the tokens were made
            cfg.weights.checkpoint = info.weights.source
        embedder = WhisperEmbedder(cfg, device)
        if embedder.weights_identity().sha256 != info.weights.sha256:
            raise NarratorError(f"{embedder.weights_identity().source}: Whisper weights sha256 "
                                f"{embedder.weights_identity().sha256[:12]} differ from the {info.weights.sha256[:12]} "
                                f"the tokens were made with ({info.weights.source})")
    kmeans = load_kmeans(find(info.kmeans["file"]), embedding_source(embedder), info.codebook_size)
    if kmeans.meta.centroids.sha256 != info.kmeans["centroids_sha256"]:
        raise NarratorError(f"{info.kmeans['file']}: centroids sha256 {kmeans.meta.centroids.sha256[:12]} differ from the "
                            f"{info.kmeans['centroids_sha256'][:12]} the tokens were made with")
    return SemanticTokenizer(embedder, kmeans, device)


def random_whisper_name(model: str, seed: int) -> str:
    """File name of random-init Whisper encoder weights kept in a token folder."""
    return f"whisper_{model}_random_seed{seed}.safetensors"
