"""A live `recurlm serve` app on 127.0.0.1 for the server's tests: a tiny random model whose replies run to
max_tokens, with a BPE tokenizer of bytes and the specials."""

import socket
import threading
import time

import openai
import torch
import uvicorn
from helpers import tiny_model

from recurlm.config import build_configs
from recurlm.serve.api import create_app
from recurlm.text.tokenizer import Tokenizer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, **options):
        self.tok = tok = Tokenizer.bpe([], 300)  # bytes and the specials
        model = tiny_model(vocab_size=300, seq_len=96, n_kv_head=2)
        with torch.no_grad():  # replies run to max_tokens: the end token's logit is 0, below the best of 299 others
            model.lm_head.weight[tok.eos_id] = 0.0
        configs = build_configs({"stage": {"sft": {"tasks": "arithmetic"}}, "inference": {"recurrences": 2}})
        self.model, self.configs = model, configs
        self.app = create_app(model, tok, configs, "tiny", **options)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, port=self.port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True


def client(server, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, **kw)
