"""Sequence packing of chat data (utils.data.packing): packed conversations give the loss and logits they give
alone, attention never crosses from one conversation into the next, packing is on by default where that holds
and off where it does not, and a run trains packed end to end.

Models are a tiny config-built LlamaForCausalLM (tests.test_chat_data's folder) and the real SmolLM2-135M-Instruct
(smollm2_folder), both in fp32 on the CPU; the other architectures are tiny random ones built from their configs.
"""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F

from utils.config import WizardConfig
from utils.data import DataError, prepare_data
from utils.data.chat import IGNORE_INDEX
from utils.data.packing import collate_packed, decide_packing, pack_rows, rounded
from utils.models.packing import PACKABLE_MODEL_TYPES, model_refusal, packed_logits

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed: packing is for its causal LMs")

from tests.test_chat_data import messages_row, model_folder, spec, write_jsonl  # noqa: E402,F401  (the fixture too)


def varied_chats(n: int, longest: int = 30) -> list[dict]:
    """Conversations of quite different lengths, so a batch pads a lot and packs well."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog what is two plus four name a colour blue green".split()
    return [messages_row(" ".join(rng.choices(words, k=rng.randint(2, 12))) + "?",
                         " ".join(rng.choices(words, k=rng.randint(1, longest))) + ".") for _ in range(n)]


def chat_items(tmp_path, folder, n: int = 8, **changes):
    data = prepare_data(spec(write_jsonl(tmp_path / "chats.jsonl", varied_chats(n)), folder, tmp_path,
                             val_split=0.25, max_seq_len=128, **changes))
    return data, [data.train[i] for i in range(len(data.train))]


def per_conversation(logits: torch.Tensor, y: torch.Tensor, spans) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(logits (T, V), loss)] of each conversation at (row, start, length) in a batch."""
    out = []
    for row, start, length in spans:
        piece, targets = logits[row, start:start + length], y[row, start:start + length]
        out.append((piece, F.cross_entropy(piece.float(), targets, ignore_index=IGNORE_INDEX)))
    return out


def packed_spans(batch, items) -> list[tuple[int, int, int]]:
    """(row, start, length) of each item in a packed batch: each conversation starts at position 0 (the padding
    after a row's last one carries on its positions), and is the item whose tokens are there."""
    spans, left = [None] * len(items), set(range(len(items)))
    for row, positions in enumerate(batch.position_ids.tolist()):
        for start in (i for i, p in enumerate(positions) if p == 0):
            i = next(i for i in sorted(left) if torch.equal(batch.x[row, start:start + len(items[i][0])], items[i][0]))
            spans[i] = (row, start, len(items[i][0]))
            left.remove(i)
    assert not left, "a conversation is missing from the packed batch"
    return spans


def check_packed_equals_unpacked(model, items, pad_id: int, max_len: int, atol: float) -> int:
    """Each conversation's logits and loss in a packed batch equal those of its own padded row; returns rows."""
    from utils.models.tasks import LanguageModelTask

    task = LanguageModelTask()
    padded = (torch.nn.utils.rnn.pad_sequence([x for x, _ in items], batch_first=True, padding_value=pad_id),
              torch.nn.utils.rnn.pad_sequence([y for _, y in items], batch_first=True, padding_value=IGNORE_INDEX))
    packed = collate_packed(items, pad_id, max_len)
    assert packed.x.shape[0] < len(items)  # it did pack: fewer rows than conversations
    with torch.no_grad():
        rows = [(i, 0, len(x)) for i, (x, _) in enumerate(items)]
        alone = per_conversation(task.logits(model, padded), padded[1], rows)
        together = per_conversation(task.logits(model, packed), packed.y, packed_spans(packed, items))
        loss_padded, loss_packed = task.loss(model, padded)[0], task.loss(model, packed)[0]
    for (logits, loss), (logits_alone, loss_alone) in zip(together, alone):
        torch.testing.assert_close(logits, logits_alone, atol=atol, rtol=1e-4)
        torch.testing.assert_close(loss, loss_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)  # the step's loss: the same number
    return packed.x.shape[0]


# ------------------------------------------------------------------ rows and labels

def test_packing_never_computes_more_tokens_than_padding_and_keeps_every_conversation_once():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 120) for _ in range(rng.randint(1, 16))]
        rows = pack_rows(lengths, 128)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        longest_row = max(sum(lengths[i] for i in row) for row in rows)
        assert longest_row <= max(128, max(lengths))
        assert len(rows) * rounded(longest_row) <= len(lengths) * rounded(max(lengths))  # the memory bound


def test_a_packed_row_keeps_each_conversations_targets_and_restarts_positions(tmp_path, model_folder):
    data, items = chat_items(tmp_path, model_folder)
    batch = collate_packed(items, data.pad_id, 128)
    for (row, start, length), (x, y) in zip(packed_spans(batch, items), items):
        assert torch.equal(batch.y[row, start:start + length], y)  # answers-only masking as unpacked
        assert batch.position_ids[row, start:start + length].tolist() == list(range(length))
        # The last input of a conversation predicts its own last token, never the next conversation's first.
        assert int(batch.y[row, start + length - 1]) in (int(y[-1]), IGNORE_INDEX)
    assert (batch.y != IGNORE_INDEX).sum() == sum(int((y != IGNORE_INDEX).sum()) for _, y in items)
    assert batch.x.shape[1] % 8 == 0 and batch.x.shape[1] <= 128


# ------------------------------------------------------------------ the promise, on models

def test_packed_conversations_give_their_own_loss_and_logits_on_a_tiny_llama(tmp_path, model_folder):
    from transformers import AutoModelForCausalLM

    data, items = chat_items(tmp_path, model_folder, n=12)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    assert check_packed_equals_unpacked(model, items, data.pad_id, 128, atol=1e-5) < len(items)


def test_packed_conversations_give_their_own_loss_and_logits_on_the_real_model(tmp_path, smollm2_folder):
    from transformers import AutoModelForCausalLM

    data, items = chat_items(tmp_path, smollm2_folder, n=8)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    check_packed_equals_unpacked(model, items, data.pad_id, 128, atol=2e-4)


def test_changing_one_conversation_leaves_the_next_ones_logits_alone(tmp_path, model_folder):
    """The test a leak would fail: and it does fail when transformers keeps its cache (use_cache from the config),
    which turns off its packed-sequence detection."""
    from transformers import AutoModelForCausalLM

    data, items = chat_items(tmp_path, model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    (xa, ya), (xb, yb) = items[0], items[1]
    batch = collate_packed([(xa, ya), (xb, yb)], data.pad_id, 128)
    assert batch.x.shape[0] == 1  # one row: A then B
    other = collate_packed([(torch.flip(xa, [0]), ya), (xb, yb)], data.pad_id, 128)  # A's tokens changed
    a, b = slice(0, len(xa)), slice(len(xa), len(xa) + len(xb))
    with torch.no_grad():
        first, second = packed_logits(model, batch)[0], packed_logits(model, other)[0]
        assert not torch.allclose(first[a], second[a], atol=1e-3)  # A's own logits do change
        torch.testing.assert_close(first[b], second[b], atol=1e-6, rtol=0)  # B's do not
        leaky = [model(input_ids=t.x, position_ids=t.position_ids).logits[0] for t in (batch, other)]
    assert not torch.allclose(leaky[0][b], leaky[1][b], atol=1e-3)  # with the cache on, B sees A


def tiny_causal_lm(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=128, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  n_embd=32, n_layer=2, n_head=4, max_position_embeddings=128, n_positions=128,
                                  pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def leak(model) -> float:
    """How far the second of two packed conversations' logits move from its logits alone."""
    a, b = torch.randint(1, 128, (1, 9), generator=torch.Generator().manual_seed(1)), torch.randint(1, 128, (1, 6))
    positions = torch.cat([torch.arange(9), torch.arange(6)])[None]
    with torch.no_grad():
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits[0, 9:]
        alone = model(input_ids=b, use_cache=False).logits[0]
    return float((packed - alone).abs().max())


@pytest.mark.parametrize("model_type", sorted(PACKABLE_MODEL_TYPES))
def test_every_architecture_packing_is_on_for_keeps_attention_within_each_conversation(model_type):
    model = tiny_causal_lm(model_type)
    assert model_refusal(model) == ""
    assert leak(model) < 1e-5


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_each_attention_implementation_packing_is_on_for_keeps_conversations_apart(implementation):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation=implementation)).eval()
    assert model.config._attn_implementation == implementation and model_refusal(model) == ""
    assert leak(model) < 1e-5


def test_flash_attention_which_reads_packed_rows_only_at_batch_size_1_is_not_packed():
    from types import SimpleNamespace

    from utils.models.packing import packing_refusal

    refusal = packing_refusal(SimpleNamespace(model_type="llama", _attn_implementation="flash_attention_2"))
    assert "'flash_attention_2' reads packed rows only at batch size 1" in refusal


@pytest.mark.parametrize("model_type", ["jamba", "qwen3_next"])
def test_hybrids_that_build_the_same_mask_still_leak_through_their_recurrent_layers_so_stay_unpacked(model_type):
    """Why packing is on by architecture, not by 'uses create_causal_mask': these do and still carry state across."""
    model = tiny_causal_lm(model_type)
    assert leak(model) > 1e-4
    assert f"{model_type!r} is not among the architectures checked" in model_refusal(model)


# ------------------------------------------------------------------ when it is on

def test_packing_is_on_by_default_for_chat_data_on_a_llama_and_off_when_asked(tmp_path, model_folder):
    from utils.training.builder import batch_lengths, build_data_spec, describe_batch

    path = write_jsonl(tmp_path / "chats.jsonl", varied_chats(40))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "run"), max_seq_len=128, batch_size=8,
                          val_split=0.2)
    assert config.pack_sequences == "auto"
    data = prepare_data(build_data_spec(config))
    assert data.train.pack_to == data.val.pack_to == 128
    assert len(next(iter(data.train.collate([data.train[i] for i in range(8)])))) < 8  # fewer rows than 8
    line = describe_batch(config, 1, data).splitlines()[1]
    assert line.startswith("Packing: on - ") and "conversations per row" in line and "fewer tokens computed" in line
    off = prepare_data(build_data_spec(config.replace(pack_sequences="false")))
    assert off.train.pack_to is None
    assert len(describe_batch(config.replace(pack_sequences="false"), 1, off).splitlines()) == 1  # no packing line
    # The estimate's shapes: packed batches time at their tokens over batch_size rows, memory at the longest padded.
    (typical, longest), (padded, longest_off) = batch_lengths(config, data), batch_lengths(config, off)
    assert longest == longest_off and typical < padded
    from utils.training.builder import build_dataloaders

    loader, _ = build_dataloaders(config, data.train, data.val, pin_memory=False)
    computed = [batch[0].numel() for batch in loader]
    assert abs(sum(computed) / len(computed) / config.batch_size - typical) <= 0.25 * typical  # what the steps are


def test_packing_is_off_for_an_unchecked_architecture_and_true_there_is_an_error(tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "mamba"
    AutoConfig.for_model("mamba", vocab_size=128, hidden_size=32, num_hidden_layers=2).save_pretrained(folder)
    assert decide_packing("auto", str(folder)) == (False, "'mamba' is not among the architectures checked to keep "
                                                          "attention within each packed conversation")
    with pytest.raises(DataError, match=r"pack_sequences='true', but .*mamba.*set pack_sequences='auto'"):
        decide_packing("true", str(folder))
    assert decide_packing("false", str(folder)) == (False, "pack_sequences='false'")
    # Its chat data is padded, and the run says why (the tokenizer beside the config: prepare_data reads no weights).
    from tests.test_chat_data import build_tokenizer
    from utils.training.builder import describe_batch

    build_tokenizer().save_pretrained(folder)
    data = prepare_data(spec(write_jsonl(tmp_path / "chats.jsonl", varied_chats(8)), folder, tmp_path,
                             val_split=0.25, pack_sequences="auto"))
    assert data.train.pack_to is None and len(data.train.collate([data.train[0], data.train[1]])) == 2
    config = WizardConfig(model_source="pretrained", pretrained_model=str(folder), batch_size=2)
    assert describe_batch(config, 1, data).splitlines()[1] == (
        "Packing: off - 'mamba' is not among the architectures checked to keep attention within each packed "
        "conversation; each conversation is padded to its batch's longest")


def test_a_packed_batch_for_a_model_that_is_not_a_transformers_one_is_refused(tmp_path, model_folder):
    from templates import build_template

    data, items = chat_items(tmp_path, model_folder)
    gpt = build_template("gpt", {"vocab_size": 512, "max_seq_len": 128, "size": "tiny", "dropout": 0.0})
    with pytest.raises(DataError, match="is not a transformers model.*set pack_sequences='false'"):
        packed_logits(gpt, collate_packed(items, data.pad_id, 128))


def test_a_run_trains_on_packed_batches_with_the_loss_it_has_unpacked(tmp_path, model_folder, capsys):
    from utils.training import train

    path = write_jsonl(tmp_path / "chats.jsonl", varied_chats(40))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model_folder), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "packed"), max_seq_len=128, batch_size=8,
                          max_steps=3, learning_rate=1e-3, warmup_ratio=0.0, log_every_n_steps=1, val_split=0.2,
                          checkpoint_every_minutes=0, inspect=False)
    packed = train(config)
    assert "Packing: on - " in capsys.readouterr().out
    unpacked = train(config.replace(pack_sequences="false", output_dir=str(tmp_path / "unpacked")))
    assert "Packing:" not in capsys.readouterr().out
    assert packed.global_step == unpacked.global_step == 3
    steps, losses = zip(*packed.train_history)
    assert list(steps) == [s for s, _ in unpacked.train_history]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor([l for _, l in unpacked.train_history]),
                               atol=1e-4, rtol=1e-4)  # the same conversations per step, the same loss
    torch.testing.assert_close(torch.tensor([v for _, v in packed.val_history]),
                               torch.tensor([v for _, v in unpacked.val_history]), atol=1e-4, rtol=1e-4)


def test_a_conversation_cut_at_max_seq_len_takes_a_row_of_its_own_as_unpacked(tmp_path, model_folder):
    path = write_jsonl(tmp_path / "chats.jsonl", varied_chats(24, longest=60))
    data = prepare_data(spec(path, model_folder, tmp_path, val_split=0.25, max_seq_len=56, pack_sequences="auto"))
    assert "longer than max_seq_len=56 tokens cut at the end" in data.source
    items = [data.train[i] for i in range(len(data.train))]
    assert data.train.pack_to == 56 and max(len(x) for x, _ in items) == 56  # cut as unpacked: 57 tokens, 56 inputs
    batch = data.train.collate(items)
    assert batch.x.shape[1] == 56 and batch.x.shape[0] < len(items)  # the short ones still share rows
    spans = packed_spans(batch, items)
    full_rows = [row for row, _, length in spans if length == 56]
    assert full_rows and all(sum(r == row for r, _, _ in spans) == 1 for row in full_rows)  # alone in its row
