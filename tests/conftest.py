import pytest
from test_train import TINY

from recurlm.config import load_config
from recurlm.training.trainer import train


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A tiny addition run (10 steps): a real checkpoint, metrics and periodic evaluations, in seconds."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    train(load_config("rrslm-addition", overrides=[*TINY, "stage.curriculum.steps=10"]), out)
    return out
