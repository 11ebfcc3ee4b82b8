from dataclasses import dataclass, field
from typing import Literal

import pytest

from narrator.config import config_hash, load_config, save_config
from narrator.errors import ConfigError
from narrator.tokenizers.config import TokenizeConfig


@dataclass
class Inner:
    rate: float = 0.1
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    path: str | None = None
    flag: bool = False
    inner: Inner = field(default_factory=Inner)


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 20\ninner:\n  rate: 0.5\n")
    cfg = load_config(Outer, f, ["inner.rate=3e-4", "inner.rate=2", "kind=b", "inner.names=[x, y]", "flag=true"])
    assert cfg == Outer(steps=20, kind="b", flag=True, inner=Inner(rate=2.0, names=["x", "y"]))
    assert isinstance(cfg.inner.rate, float)


@pytest.mark.parametrize("override, key", [
    ("inner.rat=1", "inner.rat"),
    ("stepz=1", "stepz"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        load_config(Outer, None, [override])


@pytest.mark.parametrize("override, message", [
    ("steps=ten", "'steps': expected int"),
    ("inner.rate=fast", "'inner.rate': expected float"),
    ("steps=1.5", "'steps': expected int"),
    ("flag=3", "'flag': expected bool"),
    ("kind=c", "'kind': 'c' is not one of"),
    ("inner=5", "'inner': expected a mapping"),
])
def test_wrong_type_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("encodec:\n  bandwidht: 3.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'encodec.bandwidht'"):
        load_config(TokenizeConfig, f)


def test_value_checks_of_tokenize_config():
    with pytest.raises(ConfigError, match="bandwidth"):
        load_config(TokenizeConfig, None, ["encodec.bandwidth=2.0"])
    with pytest.raises(ConfigError, match="multiple of 0.04"):
        load_config(TokenizeConfig, None, ["chunking.chunk_seconds=1.01"])
    assert load_config(TokenizeConfig, None, ["encodec.bandwidth=1.5"]).encodec.n_codebooks == 2


def test_resolved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(Outer, None, ["inner.names=[a]", "path=runs/x"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Outer, None, ["steps=11"])) != config_hash(Outer())
