"""build_optimizer: AdamW with the model's decay groups and the kernel `optim.fused` picks for the device."""

import pytest
import torch

from narrator.config import load_config
from narrator.errors import ConfigError
from narrator.trainer.config import OptimConfig, TrainConfig
from narrator.trainer.model import GPT, PRESETS, GPTConfig
from narrator.trainer.optim import build_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=64, dropout=0.0, **PRESETS["tiny"]))


@pytest.mark.parametrize("fused, device, kernel", [
    ("auto", CPU, "foreach"), ("auto", CUDA, "fused"), (False, CUDA, "foreach"), (True, CPU, "fused"),
])
def test_fused_setting_picks_the_kernel(fused, device, kernel):
    # Only the choice is checked on CUDA: the optimizer is built, never stepped, on CPU parameters.
    optimizer = build_optimizer(tiny(), OptimConfig(fused=fused), device)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (optimizer.defaults["fused"], optimizer.defaults["foreach"]) == (kernel == "fused", kernel == "foreach")


def test_every_kernel_takes_the_same_steps_with_the_configured_groups():
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, betas=[0.8, 0.9])
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    weights = {}
    for fused in (True, False):
        model = tiny()
        optimizer = build_optimizer(model, OptimConfig(**{**cfg.__dict__, "fused": fused}), CPU)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
        assert all(g["betas"] == (0.8, 0.9) and g["lr"] == 1e-2 for g in optimizer.param_groups)
        for _ in range(3):
            model(idx, idx.roll(-1, dims=1))[1].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        weights[fused] = model.state_dict()
    assert not torch.equal(weights[True]["lm_head.weight"], tiny().lm_head.weight.detach())
    for name, w in weights[False].items():
        torch.testing.assert_close(weights[True][name], w, msg=name)


def test_fused_accepts_auto_true_false_only():
    assert load_config(TrainConfig, None, ["data.manifest=x"]).optim.fused == "auto"
    assert load_config(TrainConfig, None, ["data.manifest=x", "optim.fused=true"]).optim.fused is True
    assert load_config(TrainConfig, None, ["data.manifest=x", "optim.fused=false"]).optim.fused is False
    with pytest.raises(ConfigError, match="'optim.fused': 'always'"):
        load_config(TrainConfig, None, ["data.manifest=x", "optim.fused=always"])
