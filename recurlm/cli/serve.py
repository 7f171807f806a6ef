"""`recurlm serve`: the OpenAI-compatible server (recurlm.serve) on a host and port."""

import os
import sys
from pathlib import Path

import torch

from recurlm.checkpoint import load_checkpoint
from recurlm.cli.common import add_policy_flags, policy_from, positive_int
from recurlm.errors import UserError

GRACE_S = 3  # after SIGTERM: in-flight requests are cancelled at once, connections get this long to close


def register(sub):
    s = sub.add_parser("serve", help="an OpenAI-compatible server with continuous batching")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=positive_int, default=8000)
    s.add_argument("--model-name", help="the model's id in the API (default: the checkpoint directory's name)")
    s.add_argument("--max-batch", type=positive_int, default=64, help="requests decoded together")
    s.add_argument("--max-queue", type=positive_int, default=256, help="requests waiting; beyond: 429")
    s.add_argument("--max-body", type=positive_int, default=4 * 2**20, help="request body bytes; beyond: 413")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but / and /health")
    s.add_argument("--threads", type=positive_int, help="torch threads on a CPU (default: all cores but one)")
    add_policy_flags(s)
    s.set_defaults(func=run)


def run(args):
    try:
        import uvicorn

        from recurlm.serve.api import create_app
    except ImportError:
        raise UserError("recurlm serve needs fastapi and uvicorn: pip install 'recurlm[serve]'") from None

    # On a CPU the decoding thread leaves a core to the HTTP side (event loop, JSON, SSE): with every core in torch's
    # pool the two fight and 16 streams got 2.8x one stream's tokens/s instead of 4.7x (benchmarks/serve.py).
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    model, tok, configs = load_checkpoint(args.checkpoint)
    configs = configs.replace(inference=policy_from(args, configs.inference))
    model.set_context(configs.inference.context)
    name = args.model_name or Path(args.checkpoint).resolve().name
    app = create_app(model.eval(), tok, configs, name, args.max_batch, args.max_queue, args.api_key, args.max_body)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM or Ctrl-C: end the running requests now, then close
            app.state.batcher.close()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=GRACE_S)
    print(f"serving {name} on http://{args.host}:{args.port} (OpenAI API under /v1, web chat at /)", file=sys.stderr)
    Server(config).run()
