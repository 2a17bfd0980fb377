"""Chat and instruction data (utils.data.chat): the four row shapes, the chat template, response-only labels.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences, wrapped in
transformers' PreTrainedTokenizerFast with a ChatML-like chat template (and once without a template); the
end-to-end run fine-tunes a tiny config-built LlamaForCausalLM saved with save_pretrained.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from utils.config import WizardConfig
from utils.data import DataError, DataSpec, prepare_data
from utils.training.callbacks.last_checkpoint import TrainingStopped
from tests.test_pretrained import StopDuringStep
from utils.data.chat import IGNORE_INDEX, PLAIN_CHAT_TEMPLATE, TRAINED_CLOSE, TRAINED_OPEN, detect_shape

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed: the tests build a Hugging Face tokenizer")

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QUESTION, ANSWER = "What is two plus two?", "Two plus two is four."
TEXT = ("the quick brown fox jumps over the lazy dog. what is two plus two? two plus two is four. "
        "name a colour. the sky is blue and the grass is green. user assistant system instruction answer.")


def build_tokenizer(template: str | None = CHATML):
    """A byte-level BPE with ChatML's special tokens, as transformers' fast tokenizer; `template` its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([TEXT] * 20, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>" if template else "<|endoftext|>",
                                 pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
    if template:
        hf.chat_template = template
    return hf


def save_model(folder: Path, template: str | None = CHATML) -> Path:
    """A tiny LlamaForCausalLM and the tokenizer above, saved as a pretrained model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = build_tokenizer(template)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                         pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id))
    model.save_pretrained(folder)
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("chat-llama"))


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("plain-llama"), template=None)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def spec(path: Path, model: Path, tmp_path: Path, **changes) -> DataSpec:
    fields = dict(task="lm", source="file", name="", subset="", path=str(path), text_column="text",
                  label_column="label", val_split=0.5, seed=0, max_seq_len=64, tokenizer="model",
                  tokenizer_path=str(model), vocab_size=4096, cache_dir=tmp_path / "cache")
    return DataSpec(**{**fields, **changes})


def messages_row(question: str = QUESTION, answer: str = ANSWER) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def first_item(tmp_path: Path, model: Path, rows: list, name: str = "chat.jsonl", **changes):
    data = prepare_data(spec(write_jsonl(tmp_path / name, rows * 2), model, tmp_path, **changes))
    return data, data.train[0]


# ------------------------------------------------------------------ labels

def test_response_only_labels_are_minus_100_exactly_on_prompt_and_template_tokens(tmp_path, model_folder, capsys):
    hf = build_tokenizer()
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = hf(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = hf(ANSWER, add_special_tokens=False)["input_ids"]
    im_end, newline = hf.convert_tokens_to_ids("<|im_end|>"), hf("\n", add_special_tokens=False)["input_ids"]
    data, (x, y) = first_item(tmp_path, model_folder, [messages_row()])
    ids = prompt_ids + answer_ids + [im_end] + newline
    # This example's boundaries are clean (the header ends in a newline), so the pieces tokenize as the whole.
    assert hf(prompt + ANSWER + "<|im_end|>\n", add_special_tokens=False)["input_ids"] == ids
    assert x.tolist() == ids[:-1]
    expected = [IGNORE_INDEX] * (len(prompt_ids) - 1) + answer_ids + [im_end] + [IGNORE_INDEX] * len(newline)
    assert y.tolist() == expected  # token by token: the answer and its end-of-turn marker, nothing else
    assert hf.decode([t for t in y.tolist() if t != IGNORE_INDEX]) == ANSWER + "<|im_end|>"
    out = capsys.readouterr().out
    assert f"{TRAINED_OPEN}{ANSWER}<|im_end|>{TRAINED_CLOSE}" in out  # the sample shows what the model learns
    assert f"<|im_start|>assistant\n{TRAINED_OPEN}" in out
    assert "(chat messages, loss on the responses only)" in data.source and data.chat


def test_every_assistant_turn_of_a_multi_turn_conversation_is_trained_and_only_those(tmp_path, model_folder):
    hf = build_tokenizer()
    row = {"messages": [{"role": "system", "content": "be brief."}, {"role": "user", "content": "name a colour."},
                        {"role": "assistant", "content": "blue."}, {"role": "user", "content": "another one?"},
                        {"role": "assistant", "content": "green."}]}
    _, (x, y) = first_item(tmp_path, model_folder, [row], max_seq_len=200)
    trained = hf.decode([t for t in y.tolist() if t != IGNORE_INDEX])
    assert trained == "blue.<|im_end|>green.<|im_end|>"


def test_a_template_that_writes_earlier_answers_differently_still_trains_each_answer(tmp_path):
    """Like Qwen3's: only the last assistant turn (and the generation prompt) carry an empty reasoning block."""
    from utils.data.chat import render, trained_tokens

    hf = build_tokenizer()
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and loop.last %}"
                "<think></think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>{% endif %}")
    messages = [{"role": "user", "content": "name a colour."}, {"role": "assistant", "content": "blue."},
                {"role": "user", "content": "another one?"}, {"role": "assistant", "content": "green."}]
    text, spans = render(hf, messages, template)
    assert [text[s:e] for s, e in spans] == ["blue.<|im_end|>", "green.<|im_end|>"]
    encoding = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    marks = trained_tokens(encoding["offset_mapping"], spans)
    assert hf.decode([t for t, m in zip(encoding["input_ids"], marks) if m]) == "blue.<|im_end|>green.<|im_end|>"


def test_a_template_that_drops_earlier_reasoning_trains_the_answer_it_keeps(tmp_path):
    """Like Qwen3's: an earlier turn keeps only what follows "</think>"; the last keeps its reasoning."""
    from utils.data.chat import render

    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1].lstrip('\\n') }}{% else %}{{ m['content'] }}{% endif %}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nblue."},
                {"role": "user", "content": "another?"}, {"role": "assistant", "content": "<think>ok</think>green."}]
    text, spans = render(build_tokenizer(), messages, template)
    assert "hmm" not in text
    assert [text[s:e] for s, e in spans] == ["blue.<|im_end|>", "<think>ok</think>green.<|im_end|>"]
    template_dropping_answers = template.replace("{{ m['content'].split('</think>')[-1].lstrip('\\n') }}", "...")
    with pytest.raises(DataError, match="the chat template leaves out assistant message 2"):
        render(build_tokenizer(), messages, template_dropping_answers)


def test_a_token_that_straddles_the_start_of_an_answer_is_trained():
    from utils.data.chat import trained_tokens

    # tokens "abc" "de|fg" "hi" (characters 0-9), the answer from character 5: the second token holds its start
    assert trained_tokens([(0, 3), (3, 7), (7, 9)], [(5, 9)]).tolist() == [False, True, True]
    assert trained_tokens([(0, 3), (3, 7), (7, 9)], [(3, 7)]).tolist() == [False, True, False]


def test_a_conversation_that_opens_with_the_answer_trains_on_the_answer_not_its_header():
    from utils.data.chat import render

    text, spans = render(build_tokenizer(), [{"role": "assistant", "content": "hello."},
                                             {"role": "user", "content": "hi."}], CHATML)
    assert [text[s:e] for s, e in spans] == ["hello.<|im_end|>"]


def test_train_on_all_counts_every_token_but_the_padding(tmp_path, model_folder):
    data, (x, y) = first_item(tmp_path, model_folder, [messages_row()], train_on="all")
    assert (y != IGNORE_INDEX).all() and torch.equal(x[1:], y[:-1])  # y is x shifted by one, nothing masked
    assert "(chat messages, loss on the whole text)" in data.source


def test_conversations_encoded_in_several_batches_are_all_kept_in_order(tmp_path, model_folder, monkeypatch):
    import utils.data.chat as chat

    rows = [messages_row(f"name colour {i}.", f"colour {i}.") for i in range(7)]
    one = prepare_data(spec(write_jsonl(tmp_path / "c.jsonl", rows), model_folder, tmp_path))
    monkeypatch.setattr(chat, "ENCODE_BATCH", 2)  # our own constant, made small: 4 batches of at most 2
    several = prepare_data(spec(tmp_path / "c.jsonl", model_folder, tmp_path, cache_dir=tmp_path / "new"))  # encoded
    assert len(several.train) + len(several.val) == 7 and "conversations kept" not in several.source
    assert torch.equal(several.train.encoded.ids, one.train.encoded.ids)
    assert torch.equal(several.train.encoded.trained, one.train.encoded.trained)


def test_a_rerun_reads_the_encoded_examples_from_the_cache_and_prints_the_same(tmp_path, model_folder, monkeypatch,
                                                                              capsys):
    """A rerun after a disconnect: the same data, tokenizer and settings are not encoded again."""
    import utils.data.chat as chat

    rows = [messages_row(f"name colour {i}.", f"colour {i}.") for i in range(6)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    first = prepare_data(spec(path, model_folder, tmp_path))
    printed = capsys.readouterr().out
    monkeypatch.setattr(chat, "encode_chat", lambda *a, **k: pytest.fail("encoded again"))
    again = prepare_data(spec(path, model_folder, tmp_path))
    (cached,) = (tmp_path / "cache").glob("c.chat-*.pt")
    assert capsys.readouterr().out == f"Data: chat examples from cache {cached}\n" + printed
    for part in ("ids", "trained", "bounds"):
        assert torch.equal(getattr(again.train.encoded, part), getattr(first.train.encoded, part))
    assert torch.equal(again.train.indices, first.train.indices) and again.source == first.source
    # Another train_on, max_seq_len or file content is another cache entry, encoded anew.
    monkeypatch.undo()
    prepare_data(spec(path, model_folder, tmp_path, train_on="all"))
    prepare_data(spec(path, model_folder, tmp_path, max_seq_len=32))
    write_jsonl(path, rows[:4])
    prepare_data(spec(path, model_folder, tmp_path))
    assert "from cache" not in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("c.chat-*.pt"))) == 4


def test_a_damaged_chat_cache_is_encoded_again(tmp_path, model_folder, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", [messages_row()] * 4)
    first = prepare_data(spec(path, model_folder, tmp_path))
    (cached,) = (tmp_path / "cache").glob("c.chat-*.pt")
    cached.write_bytes(cached.read_bytes()[:100])  # torn, as no atomic write leaves it: a copy cut short
    capsys.readouterr()
    again = prepare_data(spec(path, model_folder, tmp_path))
    assert f"Data: the chat cache {cached} does not load" in capsys.readouterr().out
    assert torch.equal(again.train.encoded.ids, first.train.encoded.ids)


def test_a_batch_is_padded_to_its_longest_example_with_the_pad_id_and_minus_100(tmp_path, model_folder):
    from utils.models.tasks import LanguageModelTask

    rows = [messages_row(), messages_row("name a colour.", "blue.")]
    data = prepare_data(spec(write_jsonl(tmp_path / "c.jsonl", rows * 4), model_folder, tmp_path, val_split=0.25))
    items = [data.train[i] for i in range(len(data.train))]
    x, y = data.train.collate(items)  # (B, T)
    longest = max(len(xi) for xi, _ in items)
    assert x.shape[1] == -(-longest // 8) * 8  # rounded up to a multiple of 8
    for row, (xi, yi) in enumerate(items):
        assert torch.equal(x[row, : len(xi)], xi) and torch.equal(y[row, : len(yi)], yi)
        assert (x[row, len(xi):] == data.pad_id).all() and (y[row, len(yi):] == IGNORE_INDEX).all()
    assert data.pad_id == build_tokenizer().pad_token_id
    # Throughput counts the tokens read up to each row's last answer token, never the padding after it.
    last_trained = [max(i for i, t in enumerate(yi.tolist()) if t != IGNORE_INDEX) + 1 for _, yi in items]
    assert int(LanguageModelTask().tokens_in((x, y))) == sum(last_trained) < x.numel()


# ------------------------------------------------------------------ shapes

def test_each_shape_gives_the_same_tokens_for_the_same_conversation(tmp_path, model_folder, capsys):
    shapes = {
        "chat messages": messages_row(),
        "ShareGPT conversations": {"conversations": [{"from": "human", "value": QUESTION},
                                                     {"from": "gpt", "value": ANSWER}]},
        "Alpaca instructions": {"instruction": QUESTION, "input": "", "output": ANSWER},
        "prompt/completion pairs": {"prompt": QUESTION, "completion": ANSWER},
    }
    items = {}
    for words, row in shapes.items():
        data, items[words] = first_item(tmp_path, model_folder, [row], name=f"{len(items)}.jsonl")
        assert f"({words}, loss on the responses only)" in data.source
    reference = items["chat messages"]
    for words, (x, y) in items.items():
        assert torch.equal(x, reference[0]) and torch.equal(y, reference[1]), words
    system = {"conversations": [{"from": "system", "value": "be brief."}, {"from": "human", "value": QUESTION},
                                {"from": "gpt", "value": ANSWER}]}
    as_messages = {"messages": [{"role": "system", "content": "be brief."}] + messages_row()["messages"]}
    assert all(torch.equal(a, b) for a, b in zip(first_item(tmp_path, model_folder, [system], "s.jsonl")[1],
                                                 first_item(tmp_path, model_folder, [as_messages], "m.jsonl")[1]))


def test_alpacas_input_follows_the_instruction_after_a_blank_line(tmp_path, model_folder):
    alpaca = {"instruction": "add the numbers.", "input": "two and two", "output": "four."}
    same = messages_row("add the numbers.\n\ntwo and two", "four.")
    a = first_item(tmp_path, model_folder, [alpaca], "a.jsonl")[1]
    b = first_item(tmp_path, model_folder, [same], "b.jsonl")[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_csv_rows_in_the_alpaca_shape_and_with_messages_as_json_text(tmp_path, model_folder):
    import csv

    path = tmp_path / "alpaca.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([[QUESTION, "", ANSWER]] * 2)
    alpaca = prepare_data(spec(path, model_folder, tmp_path))
    path = tmp_path / "messages.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerows([[json.dumps(messages_row()["messages"])]] * 2)
    messages = prepare_data(spec(path, model_folder, tmp_path))
    assert "(Alpaca instructions," in alpaca.source and "(chat messages," in messages.source
    assert all(torch.equal(a, b) for a, b in zip(alpaca.train[0], messages.train[0]))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets is not installed")
def test_a_hugging_face_dataset_in_the_messages_shape(tmp_path, model_folder):
    import datasets

    folder = tmp_path / "hub"
    datasets.Dataset.from_list([{**messages_row(), "id": i} for i in range(4)]).save_to_disk(str(folder))
    data = prepare_data(spec(Path(""), model_folder, tmp_path, source="huggingface", name=str(folder)))
    reference = first_item(tmp_path, model_folder, [messages_row()])[1]
    assert "(chat messages," in data.source and len(data.train) + len(data.val) == 4
    assert torch.equal(data.train[0][1], reference[1])


def test_plain_text_rows_for_a_pretrained_model_are_still_a_token_stream(tmp_path, model_folder):
    rows = [{"text": TEXT, "prompt": "not a chat: no completion"}] * 20
    data = prepare_data(spec(write_jsonl(tmp_path / "text.jsonl", rows), model_folder, tmp_path, max_seq_len=16))
    assert not data.chat and "chat" not in data.source
    x, y = data.train[0]
    assert len(x) == 16 and torch.equal(x[1:], y[:-1])


def test_chat_rows_for_a_model_of_the_kits_own_say_to_pick_a_pretrained_one(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [messages_row()] * 4)
    with pytest.raises(DataError, match=f"{path} holds chat messages, which a pretrained model's chat template "
                                        "formats: choose model_source='pretrained'"):
        prepare_data(spec(path, Path(""), tmp_path, tokenizer="char"))
    both = write_jsonl(tmp_path / "both.jsonl", [{**messages_row(), "text": TEXT}] * 8)  # its text column is read
    data = prepare_data(spec(both, Path(""), tmp_path, tokenizer="char", max_seq_len=16))
    assert not data.chat and data.tokenizer.kind == "char"


def test_a_tokenizer_without_a_chat_template_gets_the_plain_documented_one(tmp_path, plain_folder, capsys):
    data, (x, y) = first_item(tmp_path, plain_folder, [messages_row()])
    hf = data.tokenizer.hf
    assert hf.chat_template == PLAIN_CHAT_TEMPLATE  # set on the tokenizer: an export saves it
    text = f"### User:\n{QUESTION}\n\n### Assistant:\n{ANSWER}<|endoftext|>\n\n"
    assert x.tolist() == hf(text, add_special_tokens=False)["input_ids"][:-1]
    assert hf.decode([t for t in y.tolist() if t != IGNORE_INDEX]) == ANSWER + "<|endoftext|>"
    out = capsys.readouterr().out
    assert "has no chat template; using the kit's plain one" in out
    assert f"### Assistant:\n{TRAINED_OPEN}{ANSWER}<|endoftext|>{TRAINED_CLOSE}" in out


# ------------------------------------------------------------------ length

def test_examples_longer_than_max_seq_len_are_cut_and_counted(tmp_path, model_folder, capsys):
    long_answer = " ".join(["the sky is blue and the grass is green."] * 10)
    rows = [messages_row(), messages_row(answer=long_answer), messages_row(" ".join([QUESTION] * 20))] * 2
    data = prepare_data(spec(write_jsonl(tmp_path / "long.jsonl", rows), model_folder, tmp_path, max_seq_len=32,
                             val_split=0.25))
    lengths = sorted(len(data.train[i][0]) for i in range(len(data.train))) + [len(data.val[0][0])]
    assert max(lengths) == 32  # cut to max_seq_len inputs (33 tokens)
    assert len(data.train) + len(data.val) == 4  # the two whose question fills max_seq_len have nothing to learn
    assert ("4 of 6 conversations kept; 4 longer than max_seq_len=32 tokens cut at the end; "
            "2 skipped: cut before their answer") in data.source
    assert all((y != IGNORE_INDEX).any() for _, y in (data.train[i] for i in range(len(data.train))))


def test_every_answer_cut_off_is_an_error_saying_to_raise_max_seq_len(tmp_path, model_folder):
    rows = [messages_row(" ".join([QUESTION] * 20))] * 4
    with pytest.raises(DataError, match="is cut at max_seq_len before its answer starts, so nothing is left to "
                                        "train on; raise max_seq_len"):
        prepare_data(spec(write_jsonl(tmp_path / "long.jsonl", rows), model_folder, tmp_path, max_seq_len=16))


# ------------------------------------------------------------------ bad rows

@pytest.mark.parametrize("rows, message", [
    ([messages_row(), messages_row(), {"messages": [{"role": "user"}]}],
     "line 3: message 1 of 'messages' has no 'content' (each message needs 'role' and 'content'); it has: role"),
    ([{"instruction": "a", "output": "b"}, {"instruction": "a", "input": "c"}],
     "line 2 has no 'output' field, which rows of Alpaca instructions need ('instruction' and 'output', as the "
     "first row has); it has: instruction, input"),
    ([messages_row(), {"messages": "hello"}], "line 2: 'messages' holds str 'hello', not a list of messages"),
    ([messages_row(), {"messages": []}], "line 2: 'messages' is an empty list"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}],
     "line 1: message 2 of 'conversations' is from 'bot'; ShareGPT roles are 'human', 'gpt', 'system'"),
    ([{"prompt": "a", "completion": None}], "line 1: 'completion' holds null, not text"),
], ids=["no-content", "no-output", "not-a-list", "empty", "sharegpt-role", "null"])
def test_a_malformed_line_is_an_error_naming_the_line_and_what_is_missing(tmp_path, model_folder, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as error:
        prepare_data(spec(path, model_folder, tmp_path))
    assert str(error.value) == f"{path} {message}" or str(error.value).startswith(f"{path} {message}")


def test_a_chat_file_without_any_assistant_turn_is_refused_before_anything_is_written(tmp_path, model_folder):
    from utils.training import train

    rows = [{"messages": [{"role": "user", "content": QUESTION}]}] * 6
    path = write_jsonl(tmp_path / "questions.jsonl", rows)
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "run"), max_seq_len=64, batch_size=2,
                          max_steps=2)
    with pytest.raises(DataError, match=f"{path} has no assistant turn in any of its 6 conversations"):
        train(config)
    assert not any(p.is_file() for p in (tmp_path / "run").rglob("*"))  # nothing written


# ------------------------------------------------------------------ end to end

def colour_chats(n: int) -> list[dict]:
    """Questions and answers with a pattern to learn: the answer repeats the question's colour."""
    colours = ["blue", "green", "red", "brown"]
    return [messages_row(f"name a colour like {c}.", f"the colour is {c}.") for c in colours * (n // len(colours))]


def test_a_chat_fine_tune_trains_on_the_answers_resumes_exactly_and_its_loss_falls(tmp_path, model_folder, capsys):
    from utils.training import train

    path = write_jsonl(tmp_path / "chats.jsonl", colour_chats(48))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "run"), max_seq_len=64, batch_size=8,
                          max_steps=30, max_epochs=10, learning_rate=3e-3, warmup_ratio=0.0, log_every_n_steps=1,
                          val_split=0.25, checkpoint_every_minutes=0)
    with pytest.raises(TrainingStopped):  # Stop pressed during step 10, saved, then run again: an exact resume
        train(config, extra_callbacks=[StopDuringStep(10)])
    resumed = train(config)
    assert (resumed.global_step, resumed.steps_run) == (30, 20)
    result = train(config.replace(output_dir=str(tmp_path / "straight")))
    assert resumed.train_history == result.train_history  # the same batches in the same order, the same losses
    out = capsys.readouterr().out
    assert "Data: " in out and "(chat messages, loss on the responses only), " in out
    assert f"<|im_start|>assistant\n{TRAINED_OPEN}the colour is blue.<|im_end|>{TRAINED_CLOSE}" in out
    losses = [loss for _, loss in result.train_history]
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses  # measured: about 5.7 -> 3.3 (chance is ln(vocab) = 6)
    assert all(later < earlier for (_, earlier), (_, later) in zip(result.val_history, result.val_history[1:]))


def test_the_wizards_plan_counts_conversations_and_says_what_the_loss_is_on(tmp_path, model_folder):
    from utils.ui.review import describe_plan, plan_facts

    path = write_jsonl(tmp_path / "chats.jsonl", colour_chats(8))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "run"), max_seq_len=64, val_split=0.25)
    facts = plan_facts(config, 0, 1000)
    tokens = facts.data.num_tokens
    plan = describe_plan(config, facts, "fp32", "")
    assert (f"on chats.jsonl: 8 conversations (chat messages, {tokens:,} tokens), 6 for training and 2 held out "
            "for validation; the loss is on the answers, with the model's own tokenizer") in plan
    assert "the loss is on the whole text" in describe_plan(config.replace(train_on="all"),
                                                             plan_facts(config.replace(train_on="all"), 0, 1000),
                                                             "fp32", "")


# ------------------------------------------------------------------ rows in a shape the kit does not read

@pytest.mark.parametrize("suffix, text_column", [(".jsonl", "text"), (".jsonl", "dialog"), (".csv", "text")])
def test_chat_rows_under_another_key_are_told_the_shapes_the_kit_reads(tmp_path, model_folder, suffix, text_column):
    """{"dialog": [...]} once sent the user from "no column 'text'" to "'dialog' holds list, not text" and back."""
    dialog = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    path = tmp_path / f"chat{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, [{"dialog": dialog}] * 4)
    else:
        path.write_text("dialog\n" + f'"{json.dumps(dialog).replace(chr(34), chr(34) * 2)}"\n' * 4, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        prepare_data(spec(path, model_folder, tmp_path, text_column=text_column))
    message = str(caught.value)
    assert "chat data needs a 'messages' list of {role, content} objects" in message, message
    assert "'prompt' and 'completion'" in message and "'instruction' and 'output'" in message
    row = json.loads(message[message.index('{"messages"'):])  # one valid row, shown whole
    assert detect_shape(row) == "messages" and row["messages"][1]["role"] == "assistant"


# ------------------------------------------------------------------ shapes the estimate times

def test_the_estimate_times_chat_batches_at_their_padded_length_and_measures_memory_at_the_longest(
        tmp_path, model_folder, capsys):
    """Chat batches pad to their longest example, often several times shorter than max_seq_len: an estimate timed at
    max_seq_len was 3.3-3.5x pessimistic on a real chat model (issue 29). The `estimate` command and the wizard
    time such batches; train() times its own first steps (tests/test_run_estimate.py)."""
    from utils.config import WizardConfig
    from utils.env import DeviceInfo
    from utils.data.spec import build_data_spec
    from utils.precision import resolve_precision
    from utils.training.builder import batch_lengths
    from utils.training.estimate import estimate_config

    rows = [messages_row(f"Question {i}?", "Short." if i % 4 else "A longer answer than the others, " * 3)
            for i in range(16)]
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(write_jsonl(tmp_path / "chat.jsonl", rows)), max_seq_len=256,
                          batch_size=4, max_steps=2, val_split=0.25, learning_rate=1e-4,
                          output_dir=str(tmp_path / "run"))
    estimate = estimate_config(config, resolve_precision(False, "auto", DeviceInfo("cpu", "CPU")))
    print(estimate.describe())
    data = prepare_data(build_data_spec(config))  # the examples train() read
    lengths = data.train.lengths()
    assert lengths.tolist() == [len(x) for x, _ in (data.train[i] for i in range(len(data.train)))]
    typical, longest = batch_lengths(config, data)
    assert longest == -(-int(lengths.max()) // 8) * 8 and longest < 256 // 2
    assert int(lengths.min()) < typical <= longest  # a batch pads to its longest: above the shortest, at most the longest
    assert estimate.seq_len == typical
    assert f"accumulation of about {typical} tokens (the data's padded batches)" in capsys.readouterr().out
    from tests.conftest import corpus_start

    windows = prepare_data(spec(corpus_start(tmp_path / "text", 4_000), model_folder, tmp_path))
    assert not windows.chat and batch_lengths(config, windows) == (None, None)  # windows: max_seq_len each
