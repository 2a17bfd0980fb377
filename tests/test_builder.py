"""The builder's speed habits: AdamW's kernel and TF32 follow the device facts, said in one line per run;
compile=True trains with torch.compile while checkpoints and exports keep the plain model's keys."""

import functools

import pytest
import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.export import export_result, load_exported
from utils.training import train
from utils.training.builder import (apply_matmul_precision, build_callbacks, build_loggers, build_module,
                                    build_trainer, describe_speedups)
from utils.training.callbacks.recorder import RunRecorder
from utils.models.tasks import LanguageModelTask
from utils.precision import resolve_precision

# Device facts stand in for a GPU this machine does not have: the decisions read only these.
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)
CPU = DeviceInfo("cpu", "CPU")


@pytest.mark.parametrize("device, fused, foreach", [(A100, True, None), (T4, True, None), (CPU, None, True)])
def test_adamw_is_fused_on_a_gpu_and_foreach_elsewhere(tiny_config, tiny_lm, device, fused, foreach):
    module = build_module(tiny_config, tiny_lm(), LanguageModelTask(), 10, resolve_precision(True, "auto", device))
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert (optimizer.defaults["fused"], optimizer.defaults["foreach"]) == (fused, foreach)


@pytest.fixture
def matmul_precision():
    """The process-wide setting the TF32 decision changes, put back after the test."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("device, expected", [(A100, "high"), (T4, "highest"), (CPU, "highest")])
def test_tf32_matmuls_follow_the_decision(matmul_precision, device, expected):
    # build_trainer cannot make a GPU Trainer on this machine, so the A100 and T4 cases call the step it
    # takes first; the CPU case below goes through build_trainer itself.
    for use_mixed_precision in (True, False):
        apply_matmul_precision(resolve_precision(use_mixed_precision, "auto", device))
        assert torch.get_float32_matmul_precision() == expected


def test_build_trainer_leaves_matmul_precision_alone_on_a_cpu(matmul_precision, tiny_config):
    decision = resolve_precision(True, "auto", CPU)
    build_trainer(tiny_config, decision, build_callbacks(tiny_config, decision, RunRecorder(len, 1)),
                  build_loggers(tiny_config))
    assert torch.get_float32_matmul_precision() == "highest"


def test_the_speed_habits_are_said_in_one_line(tiny_config):
    def line(device, **changes):
        return describe_speedups(tiny_config.replace(**changes), resolve_precision(True, "auto", device))

    assert line(CPU) == "Speed: AdamW (foreach), torch.compile off"
    assert line(T4) == "Speed: AdamW (fused), torch.compile off"
    assert line(A100, compile=True) == "Speed: AdamW (fused), TF32 matmuls on, model compiled with torch.compile"


@pytest.fixture
def compiled_graphs(monkeypatch):
    """torch.compile with a backend that runs dynamo's graphs as traced, and counts them.

    Inductor would compile C++ kernels for every graph, about a minute on this 2-core machine; what is
    tested here is that the compiled forward trains and leaves the saved files alone, not inductor.
    """
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    return graphs


def test_compile_trains_and_saves_what_a_plain_run_saves(tiny_config, tmp_path, compiled_graphs, capsys):
    base = tiny_config.replace(max_steps=3, checkpoint_every_minutes=0)
    plain = train(base.replace(output_dir=str(tmp_path / "plain")), device=CPU)
    assert compiled_graphs == []
    compiled = train(base.replace(output_dir=str(tmp_path / "compiled"), compile=True), device=CPU)
    assert len(compiled_graphs) >= 2  # training and validation forwards ran through dynamo
    graphs = len(compiled_graphs)
    assert "Speed: AdamW (foreach), model compiled with torch.compile" in capsys.readouterr().out
    assert compiled.global_step == 3

    def saved(result):
        return torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)["state_dict"]

    assert list(saved(compiled)) == list(saved(plain))
    assert not any("_orig_mod" in key for key in saved(compiled))

    exported = load_exported(export_result(compiled, tmp_path / "export"))
    weights = compiled.model.state_dict()
    assert exported.model.state_dict().keys() == weights.keys()
    assert all(torch.equal(exported.model.state_dict()[k], v) for k, v in weights.items())
    text = exported.generate("def ", max_new_tokens=12, seed=0)
    assert text.startswith("def ") and len(text) == len("def ") + 12

    resumed = train(base.replace(output_dir=str(tmp_path / "compiled"), max_steps=5), device=CPU)
    assert (resumed.resumed_from, resumed.global_step, resumed.steps_run) == (compiled.last_checkpoint, 5, 2)
    assert len(compiled_graphs) == graphs  # the resumed run was not compiled


def test_the_fine_tuning_note_speaks_the_notebooks_words_there():
    from utils.training.builder import fine_tuning_note

    config = WizardConfig(model_source="pretrained", pretrained_model="gpt2", learning_rate=1e-3)
    assert fine_tuning_note(config).startswith("Note: learning_rate=0.001 is high")  # the command line's
    notebook = fine_tuning_note(config, wizard_words=True)
    assert notebook.startswith("Note: a Learning rate of 0.001 is high") and "--set" not in notebook
    assert fine_tuning_note(config.replace(learning_rate=5e-5), wizard_words=True) == ""


def test_the_usual_lora_rate_draws_no_note_and_full_fine_tuning_at_it_still_does():
    """LoRA/QLoRA's usual rates (1e-4 to 2e-4) are above full fine-tuning's (2e-5 to 1e-4): each method has its
    own range, and the note names the right one."""
    from utils.training.builder import fine_tuning_note

    full = WizardConfig(model_source="pretrained", pretrained_model="gpt2", learning_rate=2e-4)
    assert fine_tuning_note(full) == ("Note: learning_rate=0.0002 is high for fine-tuning a pretrained model and may "
                                      "overwrite what it learnt; 2e-5 to 1e-4 is usual (e.g. --set "
                                      "learning_rate=5e-5).")
    for method in ("lora", "qlora"):
        assert fine_tuning_note(full.replace(finetune_method=method)) == ""
        assert fine_tuning_note(full.replace(finetune_method=method), wizard_words=True) == ""
    high = full.replace(finetune_method="lora", learning_rate=1e-3)
    assert fine_tuning_note(high) == ("Note: learning_rate=0.001 is high for LoRA adapters and may make the loss "
                                      "diverge; 1e-4 to 2e-4 is usual (e.g. --set learning_rate=2e-4).")
    assert fine_tuning_note(high, wizard_words=True).startswith("Note: a Learning rate of 0.001 is high for LoRA")


def test_the_wizards_model_note_gives_the_learning_rates_of_the_chosen_method():
    """The wizard's Model step said "2e-5 to 1e-4" for LoRA too, where 2e-4 is the usual adapter rate."""
    from utils.env import DeviceInfo
    from utils.ui.notes import model_note

    full = WizardConfig(model_source="pretrained", pretrained_model="gpt2")
    cpu = DeviceInfo("cpu", "CPU")
    assert "Fine-tuning wants a small learning rate, 2e-5 to 1e-4." in model_note(full, 50257, None, cpu)
    for method in ("lora", "qlora"):
        note = model_note(full.replace(finetune_method=method), 50257, None, cpu)
        assert "Adapters train at a learning rate of 1e-4 to 2e-4." in note and "2e-5" not in note
