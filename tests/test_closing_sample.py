"""The sample the command line prints when training ends (utils.cli._report).

A chat run (a pretrained model with a chat template, trained on chat rows) answers the data's first user message,
streamed as it is sampled and stopped at the end of its turn; a plain language model run keeps its continuation
sample. Nothing is downloaded: the model is the tiny ChatML Llama of tests/test_chat_data.py.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.test_chat_data import messages_row, model_folder, write_jsonl  # noqa: F401 (a fixture)
from utils.config import WizardConfig

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed: the model is a Hugging Face one")

QUESTION = "Which colour is the sky at noon?"


def _run(tmp_path, model_folder, data) -> str:
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(data), output_dir=str(tmp_path / "run"), max_seq_len=64, batch_size=2,
                          max_steps=2, val_split=0.2, checkpoint_every_minutes=0, inspect=False)
    config.save(tmp_path / "config.json")
    return str(tmp_path / "config.json")


def test_a_chat_run_closes_with_a_streamed_reply_to_the_datas_first_user_message(tmp_path, model_folder, capsys,
                                                                                 monkeypatch):
    """Issue 30.3: it printed 300 tokens continuing nothing in particular, after minutes of silence."""
    from utils.inference import Predictor
    from utils.cli import main

    rows = [messages_row(QUESTION, "Blue.")] + [messages_row() for _ in range(9)]
    config = _run(tmp_path, model_folder, write_jsonl(tmp_path / "chat.jsonl", rows))
    streamed = []
    real_chat = Predictor.chat

    def chat(self, message, *args, stream=None, **kwargs):  # our own chat(), its stream watched on the way
        def watched(piece):
            streamed.append(piece)
            stream(piece)
        return real_chat(self, message, *args, stream=watched, **kwargs)

    monkeypatch.setattr(Predictor, "chat", chat)
    assert main(["--config", config, "--sample-tokens", "12"]) == 0
    out = capsys.readouterr().out
    header = f"Sample: the reply to the data's first user message, {QUESTION!r}\n\n"
    assert header in out
    reply = out.split(header, 1)[1].split("\nNext: ", 1)[0]
    assert reply.strip() == "".join(streamed).strip() and streamed  # printed as the pieces came
    assert "<|im_start|>" not in reply  # the answer alone, not a continuation of formatted text


def test_a_plain_text_run_of_a_chat_model_keeps_the_continuation_sample(tmp_path, model_folder, capsys):
    from tests.conftest import corpus_start
    from utils.cli import main

    config = _run(tmp_path, model_folder, corpus_start(tmp_path / "data", 4_000))
    assert main(["--config", config, "--sample-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "\nSample:\n" in out and "first user message" not in out
