"""Run untrusted generated Python (HumanEval completions) in a subprocess: a time limit that kills the whole
process group, a memory limit, no network (sockets raise), a fresh temporary working directory, an environment
with nothing in it but PATH. A completion that loops, crashes or exhausts memory is a failure, never a hang."""

import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

GUARD = """\
import socket as _socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")
_socket.socket = _socket.create_connection = _socket.getaddrinfo = _no_network
del _socket, _no_network
"""


def _limits(memory_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """(passed, why): passed when the program exits 0 within `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="recurlm-sandbox-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(GUARD + code)
        proc = subprocess.Popen(
            [sys.executable, "-I", str(path)],
            cwd=tmp,
            env={"PATH": os.environ.get("PATH", "")},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limits(memory_mb * 2**20),
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, "timed out"
        if proc.returncode == 0:
            return True, "passed"
        lines = err.decode(errors="replace").strip().splitlines()
        return False, lines[-1] if lines else f"exit code {proc.returncode}"
