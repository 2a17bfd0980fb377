"""utils.inspection: a gallery of broken models, each caught by the check named for its bug, and good
models (both templates, a Hugging Face GPT-2 and DistilBERT built from configs) that pass every check.

The broken models are small model.py files written into tmp folders and read the way the kit reads a
user's model (model_source="file"); the data is a few KB of text or a small CSV.
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch

from tests.conftest import corpus_start
from tests.test_pretrained import _reviews, distilbert_folder, gpt2_folder  # noqa: F401 (fixtures)
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.inspection import CHECKS, inspect_model
from utils.inspection.attention import attention_weights, captured_attention
from utils.cli import main

CPU = DeviceInfo("cpu", "CPU")
SMALL = dict(max_seq_len=32, batch_size=4, learning_rate=1e-3)

# A hand-built GPT as tutorials write it: explicit softmax attention with a mask buffer. Each bug of the
# gallery replaces one of the upper-case words.
GALLERY_GPT = '''
import math
import torch
from torch import nn

C, H = 32, 2


class Boost(nn.Module):
    def forward(self, x):
        return x * 1e5


class Block(nn.Module):
    def __init__(self, T):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))
        self.register_buffer("future", torch.ones(T, T).triu(DIAGONAL).bool())
        EXTRA_INIT

    def attend(self, x):
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        att = q @ k.transpose(-2, -1) / math.sqrt(C // H)  # (B, H, T, T)
        MASK_LINE
        y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x):
        x = x + self.attend(self.ln_1(x))
        EXTRA_FORWARD
        return x + self.mlp(self.ln_2(x))


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        V, T = config["vocab_size"], config["max_seq_len"]
        self.tok = nn.Embedding(V, C)
        self.pos = nn.Embedding(POSITIONS, C)
        self.blocks = nn.ModuleList(Block(T) for _ in range(2))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=INIT_STD)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return OUTPUT
'''
GOOD = {"DIAGONAL": "1", "EXTRA_INIT": "", "EXTRA_FORWARD": "",
        "MASK_LINE": "att = att.masked_fill(self.future[:T, :T], float('-inf'))", "POSITIONS": "T",
        "INIT_STD": "0.02", "OUTPUT": "self.head(self.ln_f(x))"}

GALLERY_CLASSIFIER = '''
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.tok = nn.Embedding(config["vocab_size"], 32)
        self.head = nn.Linear(32, config["num_classes"])

    def forward(self, input_ids, attention_mask):
        x = self.tok(input_ids)  # (B, T, C)
        m = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = POOL
        return self.head(pooled)
'''
MASKED_MEAN = "(x * m).sum(dim=1) / m.sum(dim=1)"


def model_file(folder, source: str, **changes) -> str:
    for word, text in {**GOOD, **changes}.items():
        source = source.replace(word, text)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source, encoding="utf-8")
    return str(folder / "model.py")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    return corpus_start(tmp_path_factory.mktemp("text"), 6_000)


@pytest.fixture(scope="module")
def reviews_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *_reviews()])
    return path


def lm_config(tmp_path, text_file, **changes) -> WizardConfig:
    return WizardConfig(dataset_source="file", dataset_path=str(text_file), output_dir=str(tmp_path / "run"),
                        **{**SMALL, **changes})


def gallery(tmp_path, text_file, max_seq_len: int = 32, **changes):
    path = model_file(tmp_path / "model", GALLERY_GPT, **changes)
    config = lm_config(tmp_path, text_file, model_source="file", model_path=path, max_seq_len=max_seq_len)
    return inspect_model(config, device=CPU, write=False)


def verdicts(report) -> dict:
    return {c.name: c.verdict for c in report.checks}


def assert_only(report, name: str, verdict: str = "fail") -> None:
    """The named check gives the verdict; no other check fails."""
    found = verdicts(report)
    assert found[name] == verdict, report
    assert [n for n, v in found.items() if v == "fail" and n != name] == [], report


# ------------------------------------------------------------------------------------------ the good models

def test_the_hand_built_gallery_gpt_passes_every_check_when_nothing_is_broken(tmp_path, text_file):
    report = gallery(tmp_path, text_file)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert set(verdicts(report).values()) <= {"pass", "skipped"}, report
    assert verdicts(report)["padding"] == "skipped"
    # its attention is its own softmax: not seen without changing its code, and said so
    assert verdicts(report)["attention"] == "skipped"
    assert "scaled_dot_product_attention" in report.check("attention").message


def test_the_gpt_template_passes_every_check_and_writes_the_report_and_plots(tmp_path, text_file):
    report = inspect_model(lm_config(tmp_path, text_file), device=CPU)
    found = verdicts(report)
    assert found == {**{name: "pass" for name in CHECKS}, "padding": "skipped"}, report
    folder = tmp_path / "run" / "inspect"
    saved = json.loads((folder / "report.json").read_text())
    assert saved["exit_code"] == 0 and list(saved["checks"]) == list(CHECKS)
    assert saved["checks"]["causality"]["verdict"] == "pass"
    for plot in ("gradient_flow.png", "activations.png", "attention.png"):
        assert (folder / plot).read_bytes()[:4] == b"\x89PNG"
    assert report.check("attention").numbers["layers"] == 4  # the tiny template's 4 blocks
    assert report.check("initial_loss").numbers["ratio"] == pytest.approx(1.0, abs=0.1)
    assert report.check("overfit_batch").numbers["last"] < 0.5 * report.check("overfit_batch").numbers["first"]
    memory = report.check("memory").numbers
    assert memory["largest_batch"]["Tesla T4 memory"] >= 4
    assert not (tmp_path / "run" / "config.json").exists()  # an inspection is not a run


def test_the_classifier_template_passes_every_check(tmp_path, reviews_file):
    config = WizardConfig(task="classification", model_template="classifier", dataset_source="file",
                          dataset_path=str(reviews_file), output_dir=str(tmp_path / "run"), **SMALL)
    report = inspect_model(config, device=CPU, write=False)
    assert verdicts(report) == {**{name: "pass" for name in CHECKS}, "causality": "skipped"}, report
    padding = report.check("padding").numbers
    assert padding["takes_attention_mask"] is True
    assert padding["change_with_less_padding"] <= padding["tolerance"]
    assert padding["change_with_other_ids_at_padding"] <= padding["tolerance"]  # the template reads the mask
    assert report.check("initial_loss").numbers["outputs"] == 2


requires_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                           reason="transformers is not installed: the test builds Hugging Face models")


@requires_transformers
def test_a_hugging_face_gpt2_passes_every_check_and_its_attention_is_seen(tmp_path, text_file, gpt2_folder):
    config = lm_config(tmp_path, text_file, model_source="pretrained", pretrained_model=str(gpt2_folder))
    report = inspect_model(config, device=CPU, write=False)
    assert verdicts(report) == {**{name: "pass" for name in CHECKS}, "padding": "skipped"}, report.check("causality")
    assert report.check("attention").numbers["layers"] == 2


@requires_transformers
def test_a_hugging_face_distilbert_classifier_passes_every_check(tmp_path, reviews_file, distilbert_folder):
    config = WizardConfig(task="classification", model_source="pretrained", pretrained_model=str(distilbert_folder),
                          dataset_source="file", dataset_path=str(reviews_file), output_dir=str(tmp_path / "run"),
                          **SMALL)
    report = inspect_model(config, device=CPU, write=False)
    assert verdicts(report) == {**{name: "pass" for name in CHECKS}, "causality": "skipped"}, report


# --------------------------------------------------------------------------------------- the broken models

def test_a_missing_causal_mask_fails_causality_at_position_1(tmp_path, text_file):
    report = gallery(tmp_path, text_file, MASK_LINE="")
    assert_only(report, "causality")
    result = report.check("causality")
    assert result.numbers["position"] == 1 and result.numbers["sees_future_at"] == 0
    assert result.message.startswith("causality fails at position 1:")
    assert "is_causal=True" in result.fix


def test_a_mask_off_by_one_fails_causality(tmp_path, text_file):
    report = gallery(tmp_path, text_file, DIAGONAL="2")  # each position also sees the next token
    assert_only(report, "causality")
    assert report.check("causality").numbers["position"] == 1


def test_a_layer_whose_output_is_discarded_is_named_by_gradient_flow(tmp_path, text_file):
    report = gallery(tmp_path, text_file, EXTRA_INIT="self.extra = nn.Linear(C, C)",
                     EXTRA_FORWARD="unused = self.extra(x)")
    assert_only(report, "gradient_flow")
    result = report.check("gradient_flow")
    assert "blocks.0.extra.weight" in result.message and "blocks.1.extra.bias" in result.numbers["no_gradient"]
    assert "blocks.0.attn" not in " ".join(result.numbers["no_gradient"])


def test_a_position_table_shorter_than_max_seq_len_is_named_by_shapes(tmp_path, text_file):
    report = gallery(tmp_path, text_file, max_seq_len=128, POSITIONS="64")
    assert_only(report, "shapes")
    result = report.check("shapes")
    assert result.numbers["longest_length"] == 64 and result.numbers["length"] == 128
    assert "the longest sequence it takes is 64 tokens" in result.message
    assert "max_seq_len <= 64" in result.fix


def test_init_std_10_warns_in_initial_loss(tmp_path, text_file):
    report = gallery(tmp_path, text_file, INIT_STD="10.0")
    result = report.check("initial_loss")
    assert result.verdict == "warn" and result.numbers["ratio"] > 2
    assert "init" in result.fix and "0.02" in result.fix
    assert verdicts(report)["shapes"] == verdicts(report)["causality"] == "pass"


def test_a_layer_scaling_by_1e5_is_named_by_fp16(tmp_path, text_file):
    report = gallery(tmp_path, text_file, EXTRA_INIT="self.mlp.insert(0, Boost())")
    result = report.check("fp16")
    assert result.verdict == "warn"  # this run is fp32 on a CPU: a warning, not a fail
    assert result.numbers["overflowing_layer"] == "blocks.0.mlp.0"
    assert "blocks.0.mlp.0" in result.message and "65,504" in result.message
    assert result.numbers["verdict"] == "needs bf16" and "bf16-mixed" in result.fix
    assert "the fp16 check says: needs bf16" in report.precision_line
    assert [n for n, v in verdicts(report).items() if v == "fail"] == []


def test_a_layer_scaling_by_1e5_fails_fp16_when_the_run_uses_fp16(tmp_path, text_file):
    path = model_file(tmp_path / "model", GALLERY_GPT, EXTRA_INIT="self.mlp.insert(0, Boost())")
    config = lm_config(tmp_path, text_file, model_source="file", model_path=path, precision="16-mixed")
    report = inspect_model(config, device=CPU, write=False)
    assert report.check("fp16").verdict == "fail" and report.exit_code == 4


def test_a_classifier_that_reads_pad_tokens_fails_padding(tmp_path, reviews_file):
    for pool, verdict in ((MASKED_MEAN, "pass"), ("x.mean(dim=1)", "fail")):
        path = model_file(tmp_path / pool[:6], GALLERY_CLASSIFIER, POOL=pool)
        config = WizardConfig(task="classification", model_source="file", model_path=path, dataset_source="file",
                              dataset_path=str(reviews_file), output_dir=str(tmp_path / "run"), **SMALL)
        report = inspect_model(config, device=CPU, write=False)
        if verdict == "pass":
            assert set(verdicts(report).values()) <= {"pass", "skipped"}, report
        else:
            assert_only(report, "padding")
            assert "reads the padding" in report.check("padding").message


def test_a_forward_that_detaches_its_output_fails_overfit_batch(tmp_path, text_file):
    report = gallery(tmp_path, text_file, OUTPUT="self.head(self.ln_f(x)).detach()")
    result = report.check("overfit_batch")
    assert result.verdict == "fail" and "detached" in result.message
    assert report.check("gradient_flow").verdict == "fail"  # nothing gets a gradient: true, and said too
    assert report.exit_code == 4


# ---------------------------------------------------------------------------------------- attention capture

def test_recomputed_attention_weights_match_what_sdpa_applies():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[..., 0] = True
    for kwargs in ({"is_causal": True}, {"attn_mask": mask}, {"attn_mask": torch.randn(5, 5)}, {"scale": 0.7}):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
        weights = attention_weights(q, k, kwargs.get("attn_mask"), kwargs.get("is_causal", False), kwargs.get("scale"))
        torch.testing.assert_close(weights @ v, expected, atol=1e-5, rtol=1e-4)


def test_multihead_attention_is_captured_and_the_function_is_restored():
    original = torch.nn.functional.scaled_dot_product_attention
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 6, 8)
    with captured_attention(mha) as calls:
        mha(x, x, x, need_weights=False)  # the fast path: through scaled_dot_product_attention
        mha(x, x, x)  # need_weights=True: read from its output
    assert torch.nn.functional.scaled_dot_product_attention is original
    assert len(calls) == 2 and all(c.shape[-2:] == (6, 6) for c in calls)
    torch.testing.assert_close(calls[0].mean(dim=0), calls[1][0], atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------- command line, train

def test_inspect_command_exits_0_4_or_2_and_writes_the_report(tmp_path, text_file, capsys):
    good = ["--set", f"dataset_source=file", "--set", f"dataset_path={text_file}", "--set", "max_seq_len=32",
            "--set", "batch_size=4"]
    assert main(["inspect", *good, "--set", f"output_dir={tmp_path / 'good'}"]) == 0
    out = capsys.readouterr().out
    assert "causality      pass" in out and "Report: " in out
    assert json.loads((tmp_path / "good/inspect/report.json").read_text())["exit_code"] == 0

    path = model_file(tmp_path / "model", GALLERY_GPT, MASK_LINE="")
    assert main(["inspect", *good, "--set", "model_source=file", "--set", f"model_path={path}",
                 "--set", f"output_dir={tmp_path / 'leaky'}"]) == 4
    assert "causality      fail    causality fails at position 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "leaky/inspect/report.json").read_text())["checks"]["causality"]["verdict"] == "fail"

    assert main(["inspect", *good, "--set", "model_source=file", "--set", f"model_path={tmp_path / 'none.py'}",
                 "--set", f"output_dir={tmp_path / 'missing'}"]) == 2
    assert capsys.readouterr().err.startswith("error: Model file")


def test_train_refuses_a_model_that_sees_the_future_before_writing_the_run(tmp_path, text_file):
    from utils.inspection import ModelInspectionError
    from utils.training import train

    path = model_file(tmp_path / "model", GALLERY_GPT, MASK_LINE="")
    config = lm_config(tmp_path, text_file, model_source="file", model_path=path, max_steps=2, max_epochs=1)
    with pytest.raises(ModelInspectionError, match=r"causality fails at position 1"):
        train(config, device=CPU)
    run = tmp_path / "run"
    assert not (run / "config.json").exists() and not (run / "checkpoints").exists()
    assert not (run / "user_model").exists() and not (run / "tokenizer").exists()


def test_train_with_inspect_false_skips_the_checks(tmp_path, text_file, capsys):
    from utils.training import train

    path = model_file(tmp_path / "model", GALLERY_GPT, MASK_LINE="")
    config = lm_config(tmp_path, text_file, model_source="file", model_path=path, max_steps=1, max_epochs=1,
                       inspect=False)
    result = train(config, device=CPU)
    assert result.global_step == 1 and "Inspection:" not in capsys.readouterr().out


def test_train_prints_the_checks_it_ran(tmp_path, text_file, capsys):
    from utils.training import train

    train(lm_config(tmp_path, text_file, max_steps=1, max_epochs=1), device=CPU)
    assert "Inspection: shapes, causality, gradient_flow passed" in capsys.readouterr().out


def test_the_command_line_prints_a_failed_train_check_as_one_error_with_exit_2(tmp_path, text_file, capsys):
    path = model_file(tmp_path / "model", GALLERY_GPT, DIAGONAL="2")
    code = main(["--set", "dataset_source=file", "--set", f"dataset_path={text_file}", "--set", "max_seq_len=32",
                 "--set", "model_source=file", "--set", f"model_path={path}", "--set", "max_steps=1",
                 "--set", f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The model failed the checks run before training: causality") and "inspect=False" in err


@requires_transformers
def test_a_chat_fine_tune_is_inspected_on_its_padded_conversations(tmp_path):
    from tests.test_chat_data import colour_chats, save_model, write_jsonl

    model = save_model(tmp_path / "chat-model")
    path = write_jsonl(tmp_path / "chats.jsonl", colour_chats(16))
    config = WizardConfig(model_source="pretrained", pretrained_model=str(model), dataset_source="file",
                          dataset_path=str(path), output_dir=str(tmp_path / "run"), max_seq_len=64, batch_size=4)
    report = inspect_model(config, device=CPU, write=False)
    assert "chat" in report.batch_source or "chats.jsonl" in report.batch_source
    assert [n for n, v in verdicts(report).items() if v == "fail"] == [], report
    assert report.check("overfit_batch").numbers["length"] > 0
