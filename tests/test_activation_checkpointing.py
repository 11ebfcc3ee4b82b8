"""model.activation_checkpointing: the same loss and gradients as keeping activations, with fewer kept."""

from pathlib import Path

import pytest
import torch

from narrator.config import from_dict
from narrator.trainer import run
from narrator.trainer.checkpoint import latest_checkpoint, read_state
from narrator.trainer.config import ModelConfig
from narrator.trainer.model import GPT, PRESETS, GPTConfig

TINY = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


def model(activation_checkpointing: bool, dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=64, dropout=dropout,
                         activation_checkpointing=activation_checkpointing, **PRESETS["tiny"]))


def step(gpt: GPT, seed: int = 3) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and gradients of one forward and backward on a fixed batch, dropout drawn from `seed`."""
    idx = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)
    loss = gpt(idx, idx.roll(-1, dims=1))[1]
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in gpt.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_gives_the_same_loss_and_gradients(dropout):
    # With dropout, the recomputed forward must draw the same masks: checkpoint restores the RNG state.
    (loss, grads), (loss_ckpt, grads_ckpt) = step(model(False, dropout)), step(model(True, dropout))
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=0, msg=name)
    if dropout:  # the masks do depend on the seed
        assert not torch.equal(step(model(True, dropout), seed=4)[0], loss)


def test_checkpointing_keeps_fewer_activations_and_reruns_each_block_in_backward():
    saved, calls = {}, {}
    for flag in (False, True):
        gpt = model(flag)
        calls[flag] = 0
        gpt.transformer.h[0].register_forward_pre_hook(lambda *_, flag=flag: calls.__setitem__(flag, calls[flag] + 1))
        saved[flag] = 0

        def pack(t: torch.Tensor, flag: bool = flag) -> torch.Tensor:
            saved[flag] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(gpt)
    assert calls == {False: 1, True: 2}
    assert saved[True] < 0.6 * saved[False], saved


def test_checkpointing_is_off_outside_training():
    gpt = model(True).eval()
    calls = []
    gpt.transformer.h[0].register_forward_pre_hook(lambda *_: calls.append(1))
    gpt(torch.zeros(1, 8, dtype=torch.long))[0].sum()
    gpt.generate(torch.zeros(1, 4, dtype=torch.long), 3)
    assert len(calls) == 4  # one forward, then 3 generated tokens: never a recompute


def test_config_flag_reaches_the_model_and_model_configs_saved_before_it_still_load():
    assert ModelConfig(activation_checkpointing=True).gpt_config(64).activation_checkpointing
    assert not ModelConfig().gpt_config(64).activation_checkpointing
    old = {"block_size": 32, "vocab_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.0, "bias": False}
    assert from_dict(GPTConfig, old).activation_checkpointing is False


def test_bf16_autocast_on_cpu_trains_with_an_fp32_loss():
    gpt = model(True)
    (loss32, _) = step(model(False))
    idx = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = gpt(idx, idx.roll(-1, dims=1))
    loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in gpt.parameters())
    assert loss.item() == pytest.approx(loss32.item(), rel=1e-2)


def test_a_run_resumes_with_checkpointing_switched_on(token_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--set", f"data.manifest={token_folder}", "--set", f"out={out}",
            "--set", "checkpoint_every=2", "--set", "eval_every=2"]
    assert run.main(argv + ["--set", "max_steps=2"]) == 0
    assert run.main(argv + ["--set", "max_steps=4", "--set", "model.activation_checkpointing=true"]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step_0000002'} at step 2" in capsys.readouterr().out
    assert read_state(latest_checkpoint(out)).step == 4
