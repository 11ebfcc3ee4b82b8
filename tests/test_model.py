import copy

import pytest
import torch

from narrator.trainer.model import GPT, PRESETS, GPTConfig


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, dropout=0.0, **{**PRESETS["tiny"], **kw}))


def test_embeddings_are_one_tied_parameter():
    model = tiny()
    assert model.transformer.wte.weight is model.lm_head.weight
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    unique = {id(p): p.numel() for _, p in model.named_parameters(remove_duplicate=False)}
    assert model.num_params() == sum(unique.values())
    assert model.num_params() == sum(p.numel() for p in model.parameters())


def test_tied_weight_gets_gradient_from_input_and_output_use():
    tied = tiny()
    untied = copy.deepcopy(tied)
    untied.lm_head.weight = torch.nn.Parameter(tied.lm_head.weight.detach().clone())
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    for model in (tied, untied):
        model(idx, idx.roll(-1, dims=1))[1].backward()
    from_input, from_output = untied.transformer.wte.weight.grad, untied.lm_head.weight.grad
    assert from_input.abs().sum() > 0 and from_output.abs().sum() > 0
    torch.testing.assert_close(tied.lm_head.weight.grad, from_input + from_output)


def test_future_tokens_do_not_change_past_logits():
    model = tiny().eval()
    idx = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % 64
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_is_cross_entropy_of_logits():
    model = tiny().eval()
    idx = torch.randint(0, 64, (2, 10))
    logits, loss = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits.view(-1, 64), idx.view(-1))
    torch.testing.assert_close(loss, expected)
    assert model(idx)[1] is None


def test_generate_appends_tokens_and_crops_context_to_block_size():
    model = tiny().eval()
    prompt = torch.randint(0, 64, (2, 30))
    out = model.generate(prompt, max_new_tokens=10, generator=torch.Generator().manual_seed(0))  # 40 > block 32
    assert out.shape == (2, 40)
    assert torch.equal(out[:, :30], prompt)
    assert out.min() >= 0 and out.max() < 64


def test_generate_top_k_samples_only_among_the_k_most_likely():
    model = tiny().eval()
    prompt = torch.randint(0, 64, (4, 5))
    out = model.generate(prompt, max_new_tokens=6, temperature=1.5, top_k=3, generator=torch.Generator().manual_seed(0))
    for t in range(5, 11):
        top3 = model(out[:, :t])[0][:, -1].topk(3).indices
        assert (top3 == out[:, t:t + 1]).any(dim=1).all()
    greedy = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=6, top_k=1))


def test_generate_is_reproducible_with_a_generator():
    model = tiny().eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(prompt, 8, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_weight_decay_only_on_matrices():
    model = tiny(bias=True)
    decay, no_decay = model.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def test_presets_divide_heads_evenly_and_grow():
    widths = [(p["n_layer"], p["n_embd"]) for p in PRESETS.values()]
    assert all(p["n_embd"] % p["n_head"] == 0 for p in PRESETS.values())
    assert widths == sorted(widths)
    assert PRESETS["medium"] == dict(n_layer=24, n_head=16, n_embd=1024)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))
