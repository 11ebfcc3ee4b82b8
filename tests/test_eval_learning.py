"""Spoken minimal pairs detect learning: a tiny GPT trained on speech of a few words prefers them to their
pseudowords, clearly above chance; the same GPT untrained is at chance."""

import numpy as np
import torch

from narrator.evaluation import lexical_items_for_words
from narrator.streaming.layout import FlatLayout
from narrator.tokenizers.config import EncodecConfig, WeightsConfig
from narrator.tokenizers.encodec import EncodecTokenizer
from narrator.trainer.eval_pairs import AudioTokenizer, PairTokens
from narrator.trainer.model import GPT, GPTConfig

# Two-syllable frequent words; each gets a pseudoword matched in length and phonotactics. Length alone scores
# 0.45 on their pairs (the real side is the shorter in fewer than half), so it cannot pass the test by itself.
WORDS = ("water", "people", "garden", "morning", "table", "window", "children", "music", "paper", "river", "doctor",
         "summer", "money", "yellow", "number", "family")
STEPS, BATCH, BLOCK = 200, 16, 128


def test_lexical_pairs_are_above_chance_after_training_on_the_words_and_at_chance_before():
    # 3 voices x rates per word: 48 pairs. Tokens: EnCodec's real architecture (14.85 M parameters) with its
    # random-init weights, chosen here (no download), at 1.5 kbps: 2 codebooks, 150 tokens per second.
    items = lexical_items_for_words(WORDS, seed=0, renditions=3)
    codec = EncodecTokenizer(EncodecConfig(bandwidth=1.5, weights=WeightsConfig(mode="random", seed=0)))
    layout = FlatLayout(codec.n_codebooks)
    pairs = PairTokens.of(items, AudioTokenizer(layout, codec))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=layout.vocab_size, n_layer=2, n_head=2, n_embd=64,
                          dropout=0.0))

    before = pairs.score(model.eval())
    assert before.n == 48
    assert before.ci95[0] < 0.5 < before.ci95[1], before

    # The words' speech (the real sides only: no pseudoword is ever heard), recordings back to back after
    # boundary units as the trainer packs them, in random windows starting on a frame.
    stream = torch.from_numpy(np.concatenate(pairs.real))
    unit = layout.unit_tokens
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(STEPS):
        starts = rng.integers(0, (len(stream) - BLOCK - 1) // unit, BATCH) * unit
        windows = torch.stack([stream[s: s + BLOCK + 1] for s in starts])
        _, loss = model(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    after = pairs.score(model.eval())
    assert after.ci95[0] > 0.5, after
    assert after.accuracy > 0.9, after
    assert after.length_baseline == before.length_baseline < 0.5  # the same pairs: only the model changed
