"""utils.plan: plan_run's RunPlan is the run train(), `estimate`, the inspection and the wizard see, and its one
memory model gives them the same figure for the same config."""

from __future__ import annotations

import torch

from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.models.tasks import TASKS
from utils.plan import RunPlan, plan_run
from utils.plan.memory_model import memory_line
from utils.precision import resolve_precision
from utils.training import train
from utils.training.estimate import estimate_config
from utils.ui.model_check import describe_check, measure_model

TINY = dict(model_size="tiny", max_seq_len=32, batch_size=8, val_split=0.02, log_every_n_steps=1)
# A capacity given for the device makes the memory model the model's own (the process's resident memory, which
# differs from one moment to the next, is counted only against a CPU's whole RAM): then the figure is exact.
SIZED_CPU = DeviceInfo("cpu", "Test CPU", None, 8 * 2**30)


def test_plan_run_describes_the_run_with_its_model_where_training_runs(tmp_path):
    config = WizardConfig(**TINY, output_dir=str(tmp_path / "run"))
    plan = plan_run(config, SIZED_CPU)
    assert isinstance(plan, RunPlan)
    assert plan.decision.device == SIZED_CPU and plan.task is TASKS["lm"]
    assert plan.vocab_size == plan.data.tokenizer.vocab_size and plan.num_classes == 0
    assert {p.device for p in plan.model.parameters()} == {torch.device("cpu")}
    assert plan.memory is not None and plan.memory.process_bytes == 0
    assert plan.memory.capacity_name == "Test CPU memory" and plan.memory.per_sequence_bytes > 0
    # Nothing of the run is written: only the data's token cache (prepare_data's, as before any plan).
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data_cache"]


def test_plan_run_seeds_the_model_the_same_whether_it_prepares_the_data_or_is_given_it(tmp_path):
    config = WizardConfig(**TINY, max_steps=1, output_dir=str(tmp_path / "run"))
    planned = plan_run(config, SIZED_CPU, measure=False).model.state_dict()
    from utils.plan import plan_data

    again = plan_run(config, SIZED_CPU, data=plan_data(config), measure=False).model.state_dict()
    assert all(torch.equal(planned[k], again[k]) for k in planned)


def test_the_wizard_check_estimate_and_train_say_the_same_memory_figure(tmp_path, capsys):
    """The same config, in one process: the wizard's model check, `estimate` (estimate_config) and train() read
    one memory model, so they print the same bytes at the config's batch."""
    config = WizardConfig(**TINY, max_steps=2, output_dir=str(tmp_path / "run"))
    decision = resolve_precision(config.use_mixed_precision, config.precision, SIZED_CPU)
    estimate = estimate_config(config, decision)
    check = measure_model(config, decision)
    capsys.readouterr()
    result = train(config, device=SIZED_CPU)
    printed = capsys.readouterr().out.splitlines()
    line = memory_line(estimate.memory, config.batch_size)
    assert line in printed  # train() printed exactly the estimate's memory line
    assert line in estimate.describe().splitlines()
    assert check.memory == estimate.memory
    assert check.total_bytes == estimate.memory.bytes_at(config.batch_size) == estimate.peak_memory_bytes
    assert result.estimate.memory == estimate.memory
    from utils.formatting import format_bytes

    assert f"about {format_bytes(check.total_bytes)} = " in describe_check(check, config, decision)


def test_on_a_cpu_the_model_side_of_the_memory_model_is_the_same_for_all(tmp_path):
    """Against a CPU's whole RAM the figure adds the process's resident memory when measured (it moves between
    two measurements, so the figures differ by that alone): the model's own part is the same."""
    cpu = DeviceInfo("cpu", "CPU")
    config = WizardConfig(**TINY, output_dir=str(tmp_path / "run"))
    decision = resolve_precision(config.use_mixed_precision, config.precision, cpu)
    planned = plan_run(config, decision).memory
    check = measure_model(config, decision).memory
    estimated = estimate_config(config, decision).memory
    assert planned.process_bytes > 0
    for memory in (check, estimated):
        assert (memory.fixed_bytes, memory.per_sequence_bytes) == (planned.fixed_bytes, planned.per_sequence_bytes)


def test_the_inspection_inspects_the_model_and_data_train_plans(tmp_path):
    from utils.inspection.subject import build_subject

    config = WizardConfig(**TINY, output_dir=str(tmp_path / "run"))
    decision = resolve_precision(config.use_mixed_precision, config.precision, SIZED_CPU)
    subject = build_subject(config, decision)
    plan = plan_run(config, decision, measure=False)
    assert (subject.vocab_size, subject.num_classes, subject.pad_id) == (plan.vocab_size, plan.num_classes, plan.pad_id)
    planned = plan.model.state_dict()
    assert all(torch.equal(value, planned[key]) for key, value in subject.model.state_dict().items())
    assert subject.batch_source.endswith(plan.data.source)
