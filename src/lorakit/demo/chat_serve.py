"""`lorakit demo chat`, last stage: `lorakit serve` as a subprocess on the base model with the demo's adapter
directory, one question through the `openai` client, and the server stopped (always, also on error)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lorakit.errors import LorakitError

START_TIMEOUT_S = 300.0  # loading the GGUF on 2 busy cores takes 30-60 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if json.loads(response.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise LorakitError(f"lorakit serve exited with code {process.returncode} before answering: "
                               f"{' | '.join(tail)} (full log: {log})")
        if time.monotonic() > deadline:
            raise LorakitError(f"lorakit serve did not answer /health within {START_TIMEOUT_S:.0f} s (log: {log})")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> int:
    """Terminate the server and reap it; kill it if it does not exit in 30 s. Its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def ask_served(model_path: Path, adapters: Path, adapter: str, prompt: str, max_tokens: int,
               log: Path) -> dict[str, Any]:
    """Serve `adapters` on `model_path`, ask `prompt` (one user turn, greedy) of adapter `adapter` through the
    openai client; {"answer", "pid", "returncode", "port"} once the server is stopped."""
    from openai import OpenAI

    port = free_port()
    command = [sys.executable, "-m", "lorakit", "serve", "--model", str(model_path), "--adapters", str(adapters),
               "--port", str(port), "--dtype", "float32", "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(process, url, log)
        client = OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=adapter, messages=[{"role": "user", "content": prompt}],
                                               max_tokens=max_tokens, temperature=0)
        answer = reply.choices[0].message.content or ""
    finally:
        code = stop(process)
    return {"answer": answer, "pid": process.pid, "returncode": code, "port": port}
