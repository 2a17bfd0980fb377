"""Bad input through the command line: one line naming the field or file and the fix, exit code 2, no
traceback, and an existing run folder left byte for byte as it was.

Each row runs `python -m utils.training` in a subprocess, as a user would. A run trained from a model
file is the witness: rows that read its config or point at its folder must leave every file in it alone.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, corpus_start
from tests.test_user_models import BUILD_MODEL_LM, HF_GPT2, write_model
from utils.config import WizardConfig
from utils.training import train
from utils.cli import COMMANDS
from utils.models.user_models import GIST_BASE_URL_ENV, GIST_TIMEOUT_ENV

GIST_SECONDS = 3  # KIT_GIST_TIMEOUT in the subprocess: the whole download's time allowed


class TricklingGistServer:
    """Answers every request with headers at once, then one byte of model.py per second, for as long as asked."""

    def __init__(self, seconds_per_byte: float = 1.0):
        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                while not stop.wait(seconds_per_byte):
                    try:
                        self.wfile.write(b"#")
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained run (the witness), the model file it trained, a slow Gist server, and a folder for new runs."""
    root = tmp_path_factory.mktemp("bad-input")
    data = corpus_start(root / "data", 6_000)
    model = write_model(root / "models", BUILD_MODEL_LM, config={"d_model": 8})
    witness = root / "witness"
    train(WizardConfig(dataset_source="file", dataset_path=str(data), model_source="file", model_path=str(model),
                       max_seq_len=32, batch_size=4, max_steps=2, log_every_n_steps=1, output_dir=str(witness)))
    server = TricklingGistServer()
    yield {"root": root, "data": data, "model": model, "witness": witness, "server": server}
    server.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _config_folder(w):
    return ["--config", str(w["witness"])], f"{w['witness']} is a folder, not a config file; give the JSON file"


def _output_dir_is_a_file(w):
    target = w["witness"] / "config.json"
    return (["--config", str(target), "--set", f"output_dir={target}"],
            f"output_dir='{target}' is a file, not a folder; choose a folder")


def _output_dir_in_proc(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "output_dir=/proc/x"],
            "output_dir='/proc/x' cannot be created (No such file or directory); choose a folder you can write to")


def _config_not_utf8(w):
    path = w["root"] / "latin1.json"
    path.write_bytes(b'{"dataset_name": "caf\xe9"}')  # Latin-1, as some editors save
    return ["--config", str(path)], f"{path} is not UTF-8 text (byte 0xe9 at position 21); save the config as UTF-8"


def _model_exits_on_import(w):
    # The witness's own config, its model file now calling sys.exit(3) at import (restored after the row).
    w["model"].write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    return (["--config", str(w["witness"] / "config.json")],
            f"{w['model']} called sys.exit(3) (line 2 of model.py) while the kit imported it")


def _gist_trickles(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=gist",
             "--set", "gist_id=alice/abc123", "--set", f"output_dir={w['root'] / 'gist-run'}"],
            f"Downloading {w['server'].url}/alice/abc123/raw/model.py took more than {GIST_SECONDS} s")


def _sequences_longer_than_the_data(w):
    # The issue's max_seq_len=40000 on the built-in corpus: 10 training windows, fewer than a batch of 16.
    return (["--set", "max_seq_len=40000", "--set", f"output_dir={w['root'] / 'long-run'}"],
            "max_seq_len=40000 cuts the 465,")


def _position_table_too_short(w):
    model = write_model(w["root"] / "hf", HF_GPT2, config={"n_positions": 16})
    return (["--config", str(w["witness"] / "config.json"), "--set", f"model_path={model}",
             "--set", f"output_dir={w['root'] / 'hf-run'}"],
            "has config.max_position_embeddings=16, fewer than max_seq_len=32 tokens per training sequence")


def _pretrained_folder_missing(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=pretrained",
             "--set", "pretrained_model=./nope/", "--set", f"output_dir={w['root'] / 'pretrained-run'}"],
            "No pretrained model folder at nope: pretrained_model needs a folder saved with save_pretrained")


def _lora_on_a_model_file(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "finetune_method=lora"],
            "Fine-tuning method (finetune_method) 'lora' fine-tunes a pretrained model, but Model from is 'file'")


def _llama_config_folder(w) -> Path:
    """A tiny Llama's config.json alone: the LoRA checks read it, never weights."""
    from transformers import LlamaConfig

    folder = w["root"] / "llama-config"
    LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(folder)
    return folder


def _lora_target_matches_no_module(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=pretrained",
             "--set", f"pretrained_model={_llama_config_folder(w)}", "--set", "finetune_method=lora",
             "--set", "lora_target=q_proj,qkv", "--set", f"output_dir={w['root'] / 'lora-run'}"],
            "LoRA target modules (lora_target) 'qkv' match no module of LlamaForCausalLM; use 'all-linear' or names "
            "among down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj")


def _qlora_without_bitsandbytes(w):
    # bitsandbytes is installed here: a package of that name first on PYTHONPATH that fails to import stands
    # for a machine without it (Colab's default).
    fake = w["root"] / "no-bitsandbytes" / "bitsandbytes"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError('bitsandbytes is absent (simulated)')\n", encoding="utf-8")
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=pretrained",
             "--set", f"pretrained_model={_llama_config_folder(w)}", "--set", "finetune_method=qlora",
             "--set", f"output_dir={w['root'] / 'qlora-run'}"],
            "finetune_method='qlora' stores the model in 4 bits with the bitsandbytes library, which is not installed "
            "here: pip install bitsandbytes", {"PYTHONPATH": f"{fake.parent}{os.pathsep}{REPO_ROOT}"})


def _batch_larger_than_memory(w):
    # The issue's batch_size=1000000000 on the witness's own folder: refused by the memory model (two forward
    # passes at batch 1 and 2) before any batch is built, instead of after a minute in the allocator.
    return (["--config", str(w["witness"] / "config.json"), "--set", "batch_size=1000000000"],
            ["error: batch_size=1000000000 needs about ", " for training, more than this machine's RAM (",
             "The largest batch that fits is ", " keeps the effective batch."])


def _task_not_a_choice(w):
    # A choice written with the wrong case used to reach a rule joining fields and raise KeyError there.
    return (["--set", "task=Classification", "--set", f"output_dir={w['witness']}"],
            "Task (task) cannot be 'Classification'; choose one of 'lm', 'classification'")


def _gist_base_url_not_a_web_address(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=gist",
             "--set", "gist_id=alice/abc123", "--set", f"output_dir={w['root'] / 'gist-url-run'}"],
            f"{GIST_BASE_URL_ENV}='ftp//oops' is not a web address; give one starting with https:// (or http://)",
            {GIST_BASE_URL_ENV: "ftp//oops"})


def _pretrained_weights_truncated(w):
    folder = tiny_gpt2_folder(w["root"] / "truncated-gpt2")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # as a copy cut short leaves it
    return (["--config", str(w["witness"] / "config.json"), "--set", "model_source=pretrained",
             "--set", f"pretrained_model={folder}", "--set", f"output_dir={w['root'] / 'truncated-run'}"],
            f"{weights} is damaged or incomplete (")


def _hub_name_without_network(env_for_no_network):
    def row(w):
        return (["--config", str(w["witness"] / "config.json"), *env_for_no_network["args"],
                 "--set", f"output_dir={w['root'] / 'offline-run'}"],
                env_for_no_network["expected"], no_network_env(w))
    row.__name__ = env_for_no_network["name"]
    return row


def no_network_env(w) -> dict:
    """No network, simulated without touching it: the Hub's address is a local port nothing listens on (refused
    at once, as an offline machine refuses) and the Hugging Face cache is an empty folder."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (w["root"] / "hf-home").mkdir(exist_ok=True)
    return {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(w["root"] / "hf-home")}


_tokenizer_by_name_offline = _hub_name_without_network({
    "name": "_tokenizer_by_name_offline", "args": ["--set", "model_source=template", "--set", "tokenizer_strategy=pretrained",
                                         "--set", "tokenizer_path=gpt2"],
    "expected": "tokenizer_path='gpt2' needs the Hugging Face Hub, which cannot be reached from here (http://127.0.0.1:"})
_pretrained_by_name_offline = _hub_name_without_network({
    "name": "_pretrained_by_name_offline", "args": ["--set", "model_source=pretrained", "--set", "pretrained_model=gpt2"],
    "expected": "pretrained_model='gpt2' needs the Hugging Face Hub, which cannot be reached from here (http://127.0.0.1:"})


def _validation_split_takes_the_data(w):
    return (["--config", str(w["witness"] / "config.json"), "--set", "val_split=0.99",
             "--set", f"output_dir={w['root'] / 'split-run'}"],
            ["val_split=0.99 holds out ", "lower val_split"])


def _estimate_fsdp_on_a_cpu(w):
    return (["estimate", "--config", str(w["witness"] / "config.json"), "--set", "strategy=fsdp"],
            "strategy='fsdp' needs CUDA GPUs, but this run is on cpu")


def tiny_gpt2_folder(folder: Path) -> Path:
    """A tiny GPT-2 and its tokenizer as save_pretrained writes them (built here: nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["def f(x): return x + 1\n" * 50], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=64, bos_token_id=0, eos_token_id=0,
                               vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _chat_without_an_answer(w):
    from tests.test_chat_data import save_model, write_jsonl

    model = save_model(w["root"] / "chat-model")
    data = write_jsonl(w["root"] / "questions.jsonl", [{"messages": [{"role": "user", "content": "hi?"}]}] * 3)
    return (["--set", "model_source=pretrained", "--set", f"pretrained_model={model}", "--set", "dataset_source=file",
             "--set", f"dataset_path={data}", "--set", f"output_dir={w['root'] / 'chat-run'}"],
            f"{data} has no assistant turn in any of its 3 conversations (chat messages): there is no answer to learn")


NO_TRANSFORMERS = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                     reason="transformers is not installed: the row builds a GPT-2 from a config")
NO_PEFT = pytest.mark.skipif(importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers") is None,
                             reason="peft or transformers is not installed: the row builds a LoRA model")


@pytest.mark.parametrize("bad_input", [
    _config_folder, _output_dir_is_a_file, _output_dir_in_proc, _config_not_utf8, _model_exits_on_import,
    _gist_trickles, _sequences_longer_than_the_data, _batch_larger_than_memory,
    pytest.param(_position_table_too_short, marks=NO_TRANSFORMERS), _pretrained_folder_missing,
    _lora_on_a_model_file, pytest.param(_lora_target_matches_no_module, marks=NO_PEFT),
    pytest.param(_qlora_without_bitsandbytes, marks=NO_PEFT),
    _task_not_a_choice, _gist_base_url_not_a_web_address, pytest.param(_pretrained_weights_truncated,
                                                                       marks=NO_TRANSFORMERS),
    pytest.param(_tokenizer_by_name_offline, marks=NO_TRANSFORMERS),
    pytest.param(_pretrained_by_name_offline, marks=NO_TRANSFORMERS),
    _validation_split_takes_the_data, _estimate_fsdp_on_a_cpu,
    pytest.param(_chat_without_an_answer, marks=NO_TRANSFORMERS),
], ids=lambda row: row.__name__.strip("_"))
def test_bad_input_is_one_line_naming_it_with_exit_2_and_the_run_untouched(world, bad_input):
    before = snapshot(world["witness"])
    model_code = world["model"].read_bytes()
    args, expected, *row_env = bad_input(world)  # a row may set environment variables of its own
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", GIST_TIMEOUT_ENV: str(GIST_SECONDS),
           GIST_BASE_URL_ENV: world["server"].url, **(row_env[0] if row_env else {})}
    command = args if args[0] in COMMANDS else ["--sample-tokens", "0", *args]
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "utils.training", *command], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    finally:
        world["model"].write_bytes(model_code)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    rest = errors[0]
    for part in [expected] if isinstance(expected, str) else expected:  # a row names one part, or several in order
        assert part in rest, errors[0]
        rest = rest.split(part, 1)[1]
    assert snapshot(world["witness"]) == before
    assert not any((world["root"] / name).exists() for name in ("lora-run", "qlora-run"))  # nothing written
    assert time.monotonic() - started < 120  # a slow server or a huge max_seq_len is refused, not waited on
    assert "Retrying" not in proc.stdout + proc.stderr  # a Hub that cannot be reached: asked once, not for a minute
