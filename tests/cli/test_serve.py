"""`lorakit serve`: flags are checked, and the command serves the OpenAI API on loopback."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import lorakit
from lorakit.cli.main import main
from tests.serve.conftest import make_model, make_tokenizer


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path), "--adapters", str(tmp_path / "none")]) == 2
    assert "--adapters" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--adapters", str(tmp_path), "--max-resident", "0"]) == 2
    assert "--max-resident=0" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--adapters", str(tmp_path), "--protect-inference"]) == 2
    assert "needs --api-key" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_answers_the_openai_client(tmp_path):
    from openai import OpenAI

    tokenizer = make_tokenizer()
    model = make_model(tokenizer)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    adapted = copy.deepcopy(model)
    lorakit.add_adapter(adapted, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False), "ad")
    lorakit.save_adapter(adapted, tmp_path / "adapters", "ad")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAKIT_API_KEY": "k"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lorakit", "serve", "--model", str(tmp_path / "base"), "--adapters",
         str(tmp_path / "adapters"), "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        client = OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["base", "ad"]
        text = client.completions.create(model="ad", prompt="the cat sat", max_tokens=4, temperature=0)
        ids = tokenizer("the cat sat", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = adapted.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                   eos_token_id=2, pad_token_id=0)
        assert text.choices[0].text == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    finally:
        process.terminate()
        process.wait(30)
