"""launch/tokenize.yaml is a valid Ray cluster config (checked offline) with CPU and GPU workers."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parent.parent / "launch" / "tokenize.yaml"


def test_cluster_yaml_validates_and_has_head_cpu_and_gpu_workers():
    raw = yaml.safe_load(CLUSTER.read_text())
    config = prepare_config(raw)  # fills Ray's provider defaults, as `ray up` does
    validate_config(config)
    nodes = config["available_node_types"]
    assert set(nodes) == {"head", "cpu_worker", "gpu_worker"} and config["head_node_type"] == "head"
    assert nodes["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("pip install -e /home/ubuntu/narrator" in c for c in config["setup_commands"])
    assert raw["file_mounts"] == {"/home/ubuntu/narrator": "."}


def test_cluster_yaml_documents_the_submit_command():
    text = CLUSTER.read_text()
    assert "ray submit launch/tokenize.yaml narrator/cli.py tokenize" in text and "--set ray.address=auto" in text
