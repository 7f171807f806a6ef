"""recurlm: build, train, evaluate and serve recurrent-depth small language models."""

from recurlm.config import ModelConfig, load_config
from recurlm.engine import Engine
from recurlm.errors import UserError
from recurlm.model import RecurrentGPT, build_model

__all__ = ["Engine", "ModelConfig", "RecurrentGPT", "UserError", "build_model", "load_config"]
