"""`narrator kmeans-report`'s phonetic measure (evaluation/abx.py): ABX discrimination of minimal pairs of words
across espeak-ng voices, for each layer's k-means ids and its embeddings, beside the quantization error."""

from pathlib import Path

import numpy as np
import pytest
import torch

from narrator.evaluation.abx import (WordAbx, abx_error, angular_distance, dtw, id_mismatch, lay_out, stretch, unit,
                                     word_abx)
from narrator.evaluation.build import heard
from narrator.tokenizers.config import KmeansConfig, WhisperConfig, WhisperWeightsConfig
from narrator.tokenizers.kmeans import compare_layers, format_table
from narrator.tokenizers.whisper import WhisperEmbedder

REPO = Path(__file__).resolve().parents[1]
TINY_EN = REPO.parent / "shared" / "weights" / "whisper-tiny.en.pt"


@pytest.fixture(scope="module")
def items() -> WordAbx:
    return word_abx(6, seed=0)


def design(pattern):
    """Frames for 3 pairs x 3 voices: pattern(word, voice) -> one id sequence."""
    return [np.asarray(pattern(w, v)) for w in range(6) for v in range(3)], [(0, 1), (2, 3), (4, 5)]


def test_abx_error_is_zero_for_ids_that_name_the_word_and_one_for_ids_that_name_the_voice():
    frames, pairs = design(lambda w, v: [w, w + 10, w] if v else [w, w, w + 10, w + 10, w])  # another length, no matter
    assert abx_error(frames, 3, pairs, id_mismatch) == (0.0, 0.0)
    frames, pairs = design(lambda w, v: [v] * 5)  # B shares X's voice: a speaker code is worse than chance
    assert abx_error(frames, 3, pairs, id_mismatch) == (1.0, 0.0)
    frames, pairs = design(lambda w, v: [w // 2] * 4)  # the pair's words alike: every triplet a tie
    assert abx_error(frames, 3, pairs, id_mismatch) == (0.5, 0.0)
    frames, pairs = design(lambda w, v: [w] * 3 if w < 2 else [v] * 3)  # pair 1 told apart, 2 and 3 heard as the voice
    assert abx_error(frames, 3, pairs, id_mismatch) == pytest.approx((2 / 3, 1.959964 * np.std([0, 1, 1], ddof=1) / 3 ** 0.5))


def test_random_frames_score_chance_whatever_the_words_lengths(items):
    rng = np.random.default_rng(0)
    n = int(items.spans[..., 1].max())
    for error, ci95 in (items.score_ids(rng.integers(0, 64, n)), items.score_embeddings(rng.standard_normal((n, 32)))):
        assert abs(error - 0.5) < max(0.1, ci95) and 0 < ci95 < 0.5


def test_dtw_aligns_a_sequence_with_its_stretched_self():
    a = np.array([3, 1, 4, 1, 5])
    assert list(dtw([(a, a), (a, stretch(a, 9)), (a, a[::-1])], id_mismatch)) == [0.0, 0.0, 2 / 5]  # both ends differ
    x = unit(np.random.default_rng(1).standard_normal((7, 4)))
    assert dtw([(x, stretch(x, 11))], angular_distance)[0] == pytest.approx(0.0, abs=1e-6)
    assert list(stretch(np.arange(3), 7)) == [0, 0, 1, 1, 1, 2, 2]


def test_lay_out_starts_every_clip_on_a_frame_and_never_across_a_window():
    clips = [np.full(n, i + 1, np.float32) for i, n in enumerate([7_000, 11_000, 9_500, 4_800, 12_345])]
    audio, spans = lay_out(clips, 1_000, frame_rate=10, window_seconds=20.0, gap_seconds=0.5)
    assert len(audio) % 20_000 == 0 and len(audio) // 20_000 == 3
    for clip, (start, end) in zip(clips, spans):
        assert start // 200 == (end - 1) // 200  # frames of one 20 s window (200 frames)
        assert np.array_equal(audio[start * 100: start * 100 + len(clip)], clip) and end == -(-(start * 100 + len(clip)) // 100)


def test_items_are_minimal_pairs_said_alike_by_every_voice_and_rebuilt_byte_identical(items):
    from narrator.evaluation.speech import Utterance, speak

    assert len(items.words) == 12 and len(set(items.words)) == 12 and len(items.voices) == 5
    said = speak([Utterance(w, items.voices[1], 165) for w in items.words[:4]])
    for a, b in zip(said[0::2], said[1::2]):
        pa, pb = heard(a.phonemes), heard(b.phonemes)
        assert len(pa) == len(pb) and sum(p != q for p, q in zip(pa, pb)) == 1
    again = word_abx(6, seed=0)
    assert again.words == items.words and np.array_equal(again.spans, items.spans)
    assert again.audio.tobytes() == items.audio.tobytes()
    assert word_abx(6, seed=1).words != items.words


def test_compare_layers_scores_ids_and_embeddings_the_same_with_one_and_two_threads(items):
    """Random-init weights: near chance, and the numbers do not move with the thread count."""
    embedder = WhisperEmbedder(WhisperConfig(model="tiny.en", layer=0, weights=WhisperWeightsConfig(mode="random")))
    scores = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        frames = embedder.embed(items.audio)
        rows = compare_layers({"0": frames}, [16], cfg=KmeansConfig(heldout_fraction=0.1, passes=2),
                              probe=items, probe_frames={"0": frames})
        scores.append((rows[0].abx_ids, rows[0].abx_embeddings))
    assert scores[0] == scores[1]
    assert all(0.25 < error < 0.75 for error, _ in scores[0])
    assert "ABX ids" in format_table(rows).splitlines()[0]


def test_kmeans_report_prints_the_abx_of_each_layer_k_and_standardization(tmp_path, speech_wav, capsys):
    from narrator.cli import main

    audio = speech_wav(tmp_path / "a.wav", 10.0, seed=5)
    argv = ["kmeans-report", str(audio), "--config", str(REPO / "configs/tokenize/semantic_acoustic.yaml"),
            "--set", "whisper.weights.mode=random", "--layers=-1", "--k", "8", "--seconds", "10"]
    assert main([*argv, "--abx-pairs", "3", "--standardize", "false,true"]) == 0
    text = capsys.readouterr().out
    assert "ABX: 3 minimal pairs of words (one phoneme apart) x 5 espeak-ng voices" in text
    tables = text.split("standardize=")[1:]
    assert [t.splitlines()[0] for t in tables] == ["false", "true"]
    for table in tables:
        head, row = table.splitlines()[1:3]
        assert head.split()[:9] == ["layer", "dims", "k", "fit", "frames", "held-out", "rel.", "error", "ABX"]
        assert row.split()[:3] == ["final", "384", "8"] and all(0.0 <= float(x.split("±")[0]) <= 1.0 for x in row.split()[6:8])
    assert main([*argv, "--abx-pairs", "0"]) == 0
    assert "ABX" not in capsys.readouterr().out
    assert main([*argv, "--standardize", "yes"]) == 1
    assert "--standardize 'yes': expected true and/or false separated by commas" in capsys.readouterr().err


@pytest.mark.skipif(not TINY_EN.is_file(), reason="no ../shared/weights/whisper-tiny.en.pt")
def test_real_tiny_en_discriminates_words_across_voices_where_random_init_cannot():
    items = word_abx(8, seed=3)
    scores = {}
    for mode, weights in (("random", WhisperWeightsConfig(mode="random")),
                          ("checkpoint", WhisperWeightsConfig(checkpoint=str(TINY_EN)))):
        frames = WhisperEmbedder(WhisperConfig(model="tiny.en", layer=3, weights=weights)).embed(items.audio)
        rows = compare_layers({"3": frames}, [32], cfg=KmeansConfig(heldout_fraction=0.1, passes=2), probe=items,
                              probe_frames={"3": frames})
        scores[mode] = (rows[0].abx_ids, rows[0].abx_embeddings)
    print(f"ABX error (ids k=32, embeddings), block 3: tiny.en {scores['checkpoint']}, random-init {scores['random']}")
    assert scores["checkpoint"][1][0] < 0.25 < 0.4 < scores["random"][1][0]
    assert scores["checkpoint"][0][0] < scores["random"][0][0] - 0.1
