"""GPT.generate with a KV cache: the same samples as rerunning the context, at a fraction of the work."""

import pytest
import torch
from accelerate import Accelerator

from narrator.errors import NarratorError
from narrator.streaming.config import DataConfig
from narrator.tokenfolder.manifest import Manifest
from narrator.trainer.checkpoint import TrainerState, save_checkpoint
from narrator.trainer.config import TrainConfig
from narrator.trainer.generate import GenerateConfig, generate
from narrator.trainer.model import GPT, PRESETS, GPTConfig, KVCache, context_start

BLOCK = 32


def tiny() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=64, dropout=0.0, **PRESETS["tiny"])).eval()
    with torch.no_grad():  # sharper distributions than GPT-2's init, so samples depend on the context
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


def prompt(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("batch, prompt_len, new, temperature, top_k, align", [
    (3, 5, 20, 1.0, 10, 1),  # stays inside one block
    (3, 5, 100, 1.0, 10, 1),  # past block_size: the context jumps 5 times
    (2, 10, 90, 1.0, None, 4),  # jumps land on whole units of 4 tokens
    (2, 10, 90, 0.0, None, 3),  # greedy
    (2, 45, 30, 1.3, 5, 1),  # a prompt longer than block_size
])
def test_cached_generation_draws_the_same_tokens_as_rerunning_the_context(batch, prompt_len, new, temperature, top_k,
                                                                          align):
    model, idx = tiny(), prompt(batch, prompt_len)
    runs = [model.generate(idx, new, temperature=temperature, top_k=top_k, align=align, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(7)) for use_cache in (True, False)]
    assert runs[0].shape == (batch, prompt_len + new) and torch.equal(runs[0][:, :prompt_len], idx)
    assert torch.equal(runs[0], runs[1])
    if temperature > 0:  # and the samples do depend on the generator
        other = model.generate(idx, new, temperature=temperature, top_k=top_k, align=align,
                               generator=torch.Generator().manual_seed(8))
        assert not torch.equal(runs[0], other)


def test_cached_logits_equal_a_full_forward_fed_in_parts():
    model, idx = tiny(), prompt(2, BLOCK)
    full = model(idx)[0]
    caches = [KVCache(BLOCK) for _ in model.transformer.h]
    parts = [model(idx[:, a:b], caches=caches)[0] for a, b in ((0, 10), (10, 11), (11, 20), (20, BLOCK))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert caches[0].length == BLOCK
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :1], caches=caches)


def test_cache_runs_each_token_once_between_context_jumps():
    model, idx = tiny(), prompt(1, 5)
    positions = {True: 0, False: 0}
    for use_cache in (True, False):
        hook = model.transformer.wte.register_forward_hook(
            lambda m, args, out, use_cache=use_cache: positions.__setitem__(use_cache, positions[use_cache]
                                                                             + args[0].size(1)))
        model.generate(idx, 60, use_cache=use_cache, generator=torch.Generator().manual_seed(0))
        hook.remove()
    # Lengths 5..64 are continued. The prompt is run once, every later token once, and at lengths 33
    # and 50 the context jumps to the newest 16 tokens, 15 of them run again: 5 + 59 + 2 * 15.
    assert positions[True] == 94
    assert positions[False] > 10 * positions[True]


def test_context_grows_to_block_size_then_keeps_the_newest_half_in_whole_units():
    assert context_start(32, 0, 32) == 0
    assert context_start(33, 0, 32) == 17  # keeps 16
    assert context_start(48, 17, 32) == 17
    assert context_start(50, 17, 32) == 34
    assert context_start(33, 0, 32, align=4) == 20  # keeps 13: the newest whole units, at most 16 tokens
    assert context_start(33, 0, 32, align=4) % 4 == 0
    assert context_start(40, 0, 32, align=4, keep=32) == 8  # a long prompt keeps a whole block
    with pytest.raises(ValueError, match="align 20"):
        context_start(33, 0, 32, align=20)


def test_generate_refuses_a_model_whose_block_holds_less_than_two_units(token_folder, tmp_path):
    manifest = Manifest.load(token_folder)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(GPT(GPTConfig(block_size=7, vocab_size=4097, dropout=0.0, **PRESETS["tiny"])))
    state = TrainerState(1, 7, 1, "cfg", "test-tokens", "flat", False, boundary_token=4096)
    path = save_checkpoint(accelerator, model, tmp_path / "run", state, manifest.streams,
                           TrainConfig(data=DataConfig(manifest=str(token_folder))), keep=1)
    with pytest.raises(NarratorError) as e:
        generate(GenerateConfig(checkpoint=str(path), prompt=str(tmp_path / "never-read.wav"), device="cpu"))
    assert str(e.value) == f"{path}: block_size 7 holds less than two units of 4 tokens; too short to generate from"
