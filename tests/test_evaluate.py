"""Evaluating a trained model on a held-out file (utils.evaluate, `python -m utils.training evaluate`).

A tiny language model and a tiny classifier are trained once on the CPU. The LM's evaluation is held
against the run's own logged validation loss on the same windows; the classifier is scored on a file
built so that the answer is known: texts whose class the model gets right, some deliberately mislabelled.
"""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tests.conftest import corpus_start
from tests.test_adapters import TINY_RUN, llama_folder  # noqa: F401 (a fixture)
from tests.test_training import _write_labelled
from utils.config import WizardConfig
from utils.data import open_source, prepare_data
from utils.env import DeviceInfo
from utils.evaluate import _spec, evaluate_windows, file_windows
from utils.loading import load_run
from utils.training import train
from utils.data.spec import build_data_spec
from utils.cli import main
from utils.run_folder.history import read_history
from utils.models.tasks import TASKS
from utils.training.module import TransformerModule
from utils.export import export_result

CPU = DeviceInfo("cpu", "CPU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    lm = train(WizardConfig(dataset_source="file", dataset_path=str(corpus_start(root, 6_000)), max_seq_len=32,
                            batch_size=4, max_steps=4, model_size="tiny", log_every_n_steps=1, warmup_ratio=0.0,
                            output_dir=str(root / "lm")), device=CPU)
    classifier = train(WizardConfig(
        task="classification", model_template="classifier", model_size="tiny", dataset_source="file",
        dataset_path=str(_write_labelled(root, "csv")), text_column="review", label_column="sentiment",
        max_seq_len=24, batch_size=16, learning_rate=3e-3, warmup_ratio=0.0, max_epochs=4, val_split=0.2,
        output_dir=str(root / "classifier")), device=CPU)
    return {"root": root, "lm": lm, "classifier": classifier}


def test_lm_evaluation_equals_the_runs_own_validation_loss_on_its_windows(trained):
    run = load_run(trained["lm"].output_dir, checkpoint="last")  # validated at step 4, the last step
    logged = read_history(run.output_dir / "logs").val[-1]
    assert logged[0] == 4
    val_windows = prepare_data(build_data_spec(run.config), tokenizer=run.tokenizer).val
    ev = evaluate_windows(run.model, val_windows, batch_size=3)  # another batching: the per-token mean is the same
    assert ev.loss == pytest.approx(logged[1], rel=1e-5)
    assert ev.perplexity == math.exp(ev.loss) and ev.tokens == len(val_windows) * 32


def test_evaluate_command_on_a_text_file(trained, tmp_path, capsys):
    run_dir = trained["lm"].output_dir
    run = load_run(run_dir, checkpoint="last")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(run.tokenizer.decode(list(range(run.tokenizer.vocab_size)) * 12), encoding="utf-8")
    assert main(["evaluate", str(run_dir), "--data", str(held_out), "--checkpoint", "last",
                 "--json", str(tmp_path / "m.json")]) == 0
    numbers = json.loads((tmp_path / "m.json").read_text())
    assert numbers["perplexity"] == math.exp(numbers["loss"])
    windows = file_windows(run.tokenizer, open_source(_spec(run.config, held_out)), 32, held_out)
    assert numbers["examples"] == len(windows) and numbers["tokens"] == len(windows) * 32
    # The same windows through the LightningModule's own validation_step give the same loss.
    module = TransformerModule(run.model, TASKS["lm"], 1e-3, 0.0, 0.0, 1)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(windows, batch_size=5), verbose=False)
    validated = float(trainer.callback_metrics["val/loss"])
    assert numbers["loss"] == pytest.approx(validated, rel=1e-5)
    out = capsys.readouterr().out
    assert f"loss:        {numbers['loss']:.4f}\nperplexity:  {numbers['perplexity']:.4f}" in out
    assert f"windows:     {len(windows):,} of 32 tokens" in out


CALM = ["abc", "dead bee", "face", "bad cafe", "hag", "egg add"]  # lower case: the model says calm
LOUD = ["ABC", "DEAD BEE", "FACE", "BAD CAFE"]  # upper case: the model says loud


def test_classifier_confusion_matrix_and_f1_on_a_file_with_a_known_answer(trained, tmp_path, capsys):
    result = trained["classifier"]
    assert result.predict(CALM) == ["calm"] * 6 and result.predict(LOUD) == ["loud"] * 4  # the premise
    rows = ([(t, "calm") for t in CALM] + [(t, "loud") for t in CALM[:3]]  # 6 right, 3 called calm wrongly
            + [(t, "loud") for t in LOUD] + [(LOUD[0], "calm")])  # 4 right, 1 called loud wrongly
    data = tmp_path / "test.csv"
    data.write_text("review,sentiment\n" + "".join(f"{t},{s}\n" for t, s in rows), encoding="utf-8")
    assert main(["evaluate", str(result.output_dir), "--data", str(data), "--checkpoint", "last",
                 "--figure", str(tmp_path / "cm.png"), "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert ("Confusion matrix (rows: true label, columns: predicted)\n"
            "true \\ predicted  calm  loud\n"
            "calm                 6     1\n"
            "loud                 3     4\n") in out
    # calm: precision 6/9, recall 6/7, F1 12/16; loud: precision 4/5, recall 4/7, F1 8/12
    assert "calm         0.6667  0.8571  0.7500        7\nloud         0.8000  0.5714  0.6667        7" in out
    assert "accuracy:    0.7143\nmacro F1:    0.7083" in out
    numbers = json.loads((tmp_path / "m.json").read_text())
    assert numbers["confusion"] == [[6, 1], [3, 4]] and numbers["accuracy"] == pytest.approx(10 / 14)
    assert numbers["macro_f1"] == pytest.approx((12 / 16 + 8 / 12) / 2)
    assert numbers["per_class"]["loud"] == pytest.approx({"precision": 0.8, "recall": 4 / 7, "f1": 8 / 12,
                                                          "support": 7})
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Confusion matrix figure: {tmp_path / 'cm.png'}" in out
    # The same from Python, on the result training returned, and from an export folder of it.
    assert result.evaluate(data).confusion == [[6, 1], [3, 4]]
    exported = export_result(result, tmp_path / "exp")
    assert main(["evaluate", str(exported), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"Evaluated {exported} on {data}" in out and "calm                 6     1\n" in out
    assert (exported / "evaluation" / "test.confusion.png").is_file()  # the figure's default place


def test_scoring_a_classifier_keeps_no_autograd_graph(trained):
    """evaluate scores every text of a file: a graph kept per batch would hold all their activations."""
    from utils.models.calling import ids_to_logits

    result = trained["classifier"]
    logits = ids_to_logits(result.model, [[1, 2, 3], [4]], pad_id=0)
    assert logits.shape == (2, 2) and not logits.requires_grad


def test_a_label_the_model_never_saw_is_one_line_exit_2(trained, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n"
                            for t, s in [("abc", "calm"), ("ABC", "angry"), ("bad", "meh")]), encoding="utf-8")
    assert main(["evaluate", str(trained["classifier"].output_dir), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "labels the model never saw: 'angry' (line 2), 'meh' (line 3); it knows 'calm', 'loud'" in err


# ---------------------------------------------------------------------------------------------- chat data

FACTS = [("Where does Zorbia keep its gold?", "In Plimsk."), ("Who painted the Blue Fox?", "Ada Vell."),
         ("What do Quorns eat?", "Moss."), ("When is Lumen Day?", "In May."), ("What is a grell?", "A boat."),
         ("Which river runs through Tosk?", "The Ambre."), ("How old is Mount Vash?", "Young."),
         ("Who founded Kettering Hall?", "Bram Oak.")]
HELD_OUT = [("Where is Plimsk?", "In Zorbia."), ("Who is Ada Vell?", "A painter."), ("What is moss?", "Food."),
            ("Is a grell fast?", "Yes.")]


def _chat_rows(pairs, shape: str = "messages") -> list[dict]:
    if shape == "prompt_completion":
        return [{"prompt": q, "completion": a} for q, a in pairs]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def _write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, llama_folder):
    """A LoRA run of the tiny chat Llama (tests/test_adapters.py) on chat rows, and its adapter export."""
    pytest.importorskip("peft", reason="LoRA is built with peft (requirements-test.txt)")
    root = tmp_path_factory.mktemp("chat-eval")
    config = WizardConfig(model_source="pretrained", pretrained_model=str(llama_folder), finetune_method="lora",
                          lora_rank=4, dataset_source="file",
                          dataset_path=_write_rows(root / "train.jsonl", _chat_rows(FACTS * 4)),
                          output_dir=str(root / "run"), **{**TINY_RUN, "max_seq_len": 64, "val_split": 0.1,
                                                           "max_steps": 8})
    result = train(config, device=CPU)
    return result, export_result(result, root / "adapter")


def _independent_answer_loss(adapter, base_folder, rows, max_seq_len: int) -> float:
    """The answers-only loss of rows, from the adapter export with transformers + peft alone: each conversation
    templated whole; the tokens of the templated prompt (with its assistant header) are not counted."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(base_folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter).eval()
    total, count = 0.0, 0
    for row in rows:
        messages = row["messages"] if "messages" in row else _chat_rows([(row["prompt"], row["completion"])])[0][
            "messages"]
        ids = hf(hf.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids
        prompt = hf(hf.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False).input_ids
        assert ids[:len(prompt)] == prompt and len(ids) <= max_seq_len + 1  # nothing cut: the same text scored
        labels = torch.tensor([[-100] * len(prompt) + ids[len(prompt):]])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        total += float(torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="sum"))
        count += len(ids) - len(prompt)
    return total / count


@pytest.mark.parametrize("shape", ["messages", "prompt_completion"])
def test_evaluate_scores_held_out_chat_rows_on_the_answers_as_training_does(chat_run, llama_folder, tmp_path, capsys,
                                                                            shape):
    result, adapter = chat_run
    rows = _chat_rows(HELD_OUT, shape)
    data = _write_rows(tmp_path / "held_out.jsonl", rows)
    assert main(["evaluate", str(result.output_dir), "--data", data, "--checkpoint", "last",
                 "--json", str(tmp_path / "m.json")]) == 0
    numbers = json.loads((tmp_path / "m.json").read_text())
    expected = _independent_answer_loss(adapter, llama_folder, rows, 64)
    assert numbers["loss"] == pytest.approx(expected, rel=0.05)
    assert numbers["examples"] == len(HELD_OUT) and numbers["perplexity"] == pytest.approx(math.exp(numbers["loss"]))
    out = capsys.readouterr().out
    assert f"conversations: {len(HELD_OUT)} (" in out and "loss on the responses only" in out
    assert f"loss:        {numbers['loss']:.4f}" in out and numbers["exact_match"] is None


def test_exact_match_counts_the_greedy_answers_equal_to_the_files(chat_run, llama_folder, tmp_path, capsys):
    """One row's answer is what the model itself answers greedily (found here with transformers' generate on the
    adapter export, stopped at the end-of-text token), the other's is not: exact match 1 of 2."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, adapter = chat_run
    hf = AutoTokenizer.from_pretrained(llama_folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_folder), adapter).eval()
    question = FACTS[0][0]
    prompt = hf(hf.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True), add_special_tokens=False, return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False, eos_token_id=hf.eos_token_id,
                         pad_token_id=hf.pad_token_id)
    answer = hf.decode(out[0, prompt.input_ids.size(1):]).split(hf.eos_token)[0]
    data = _write_rows(tmp_path / "held_out.jsonl", _chat_rows([(question, answer), (question, answer + " No.")]))
    assert main(["evaluate", str(result.output_dir), "--data", data, "--checkpoint", "last", "--exact-match",
                 "--json", str(tmp_path / "m.json")]) == 0
    numbers = json.loads((tmp_path / "m.json").read_text())
    assert (numbers["exact_match"], numbers["answered"]) == (0.5, 2), answer
    assert "exact match: 0.5000 (1 of 2 greedy answers equal the file's)" in capsys.readouterr().out


def test_exact_match_on_plain_text_says_it_needs_chat_rows(trained, tmp_path, capsys):
    data = tmp_path / "plain.txt"
    data.write_text("hello there\n" * 200, encoding="utf-8")
    assert main(["evaluate", str(trained["lm"].output_dir), "--data", str(data), "--exact-match"]) == 2
    assert "'messages' list" in capsys.readouterr().err
