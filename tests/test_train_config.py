from pathlib import Path

import pytest

from narrator.config import load_config
from narrator.errors import ConfigError
from narrator.trainer.config import TrainConfig
from narrator.trainer.model import PRESETS

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"
MANIFEST = ["data.manifest=runs/tokens"]


@pytest.mark.parametrize("name", ["tiny", "demo", "gpu16gb", "semantic_acoustic"])
def test_shipped_configs_load(name):
    cfg = load_config(TrainConfig, CONFIGS / f"{name}.yaml", MANIFEST)
    gpt = cfg.model.gpt_config(vocab_size=4096)
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd) == tuple(PRESETS[cfg.model.preset][k] for k in ("n_layer", "n_head", "n_embd"))


def test_demo_and_gpu_configs_say_what_the_brief_asks():
    demo = load_config(TrainConfig, CONFIGS / "demo.yaml", MANIFEST)
    assert (demo.model.preset, demo.model.block_size, demo.batch_size, demo.cpu) == ("demo", 256, 8, True)
    assert (demo.schedule.kind, demo.eval_every, demo.checkpoint_every) == ("cosine", 100, 100)
    gpu = load_config(TrainConfig, CONFIGS / "gpu16gb.yaml", MANIFEST)
    assert (gpu.model.preset, gpu.mixed_precision, gpu.model.block_size, gpu.cpu) == ("medium", "bf16", 2048, False)


def test_semantic_acoustic_config_interleaves_both_streams_on_the_cpu():
    cfg = load_config(TrainConfig, CONFIGS / "semantic_acoustic.yaml", MANIFEST)
    assert (cfg.data.layout, cfg.data.shared_vocab, cfg.cpu) == ("interleaved", False, True)
    assert cfg.model.block_size % 8 == 0  # whole slots of 2 semantic ids + 3 frames x 2 codebooks
    assert load_config(TrainConfig, None, MANIFEST).data.layout == "flat"  # the default stays flat


@pytest.mark.parametrize("layout", ["flat", "acoustic", "semantic", "interleaved", "prefix"])
def test_every_layout_is_a_valid_data_layout(layout):
    cfg = load_config(TrainConfig, None, MANIFEST + [f"data.layout={layout}"])
    assert cfg.data.layout_name == ("flat" if layout == "acoustic" else layout)


def test_an_unknown_layout_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, MANIFEST + ["data.layout=delay"])
    assert "'data.layout'" in str(err.value) and "\n" not in str(err.value)


def test_overrides_reach_nested_keys_and_model_sizes():
    cfg = load_config(TrainConfig, None, MANIFEST + ["model.preset=small", "model.n_layer=3", "optim.betas=[0.8, 0.9]",
                                                     "schedule.kind=constant", "resume=never"])
    gpt = cfg.model.gpt_config(vocab_size=1024)
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd, gpt.vocab_size) == (3, 6, 384, 1024)
    assert cfg.optim.betas == [0.8, 0.9] and cfg.schedule.kind == "constant" and cfg.resume == "never"


def test_defaults_match_the_seed():
    cfg = load_config(TrainConfig, None, MANIFEST)
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.9, 0.95] and cfg.model.vocab_size is None
    assert cfg.resume == "auto"


@pytest.mark.parametrize("override, key", [
    ("model.n_layers=4", "model.n_layers"),
    ("optimizer.lr=1", "optimizer"),
    ("max_steps=lots", "max_steps"),
    ("optim.lr=fast", "optim.lr"),
    ("cpu=maybe", "cpu"),
    ("mixed_precision=fp8", "mixed_precision"),
    ("schedule.kind=linear", "schedule.kind"),
])
def test_unknown_key_or_wrong_type_is_a_one_line_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, CONFIGS / "tiny.yaml", MANIFEST + [override])
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)
    assert "tiny.yaml" in str(err.value)


@pytest.mark.parametrize("overrides, match", [
    ([], "data.manifest"),
    (MANIFEST + ["model.preset=huge"], "model.preset"),
    (MANIFEST + ["max_steps=0"], "max_steps"),
    (MANIFEST + ["optim.betas=[0.9]"], "optim.betas"),
])
def test_invalid_values_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, None, overrides)


def test_heads_must_divide_width():
    cfg = load_config(TrainConfig, None, MANIFEST + ["model.n_head=3"])
    with pytest.raises(ConfigError, match="n_head"):
        cfg.model.gpt_config(vocab_size=4096)
