"""recurlm: build, train, evaluate and serve recurrent-depth small language models."""

from recurlm.config import ModelConfig, load_config
from recurlm.errors import UserError
from recurlm.inference.engine import Engine
from recurlm.network.model import RecurrentGPT, build_model

__all__ = ["Engine", "ModelConfig", "RecurrentGPT", "UserError", "build_model", "load_config"]
