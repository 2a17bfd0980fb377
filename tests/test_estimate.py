"""utils.training.estimate: the pre-flight estimate, timed for real on this CPU.

A small device memory is injected with a DeviceInfo (total_memory_bytes) to test the batch that does not fit.
"""

import gc
import math
import weakref

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.test_adapters import llama_folder  # noqa: F401  (a module-scoped fixture: the tiny chat Llama)
from utils.config import WizardConfig
from utils.env import DeviceInfo
from utils.training import train
from utils.training.builder import total_steps
from utils.models.build import build_model, build_task
from utils.training.estimate import (COLAB_SESSION_SECONDS, BatchTooLargeError, Estimate, MemoryModel, _bytes,
                                     check_memory, count_validations, estimate_config, estimate_run)
from utils.precision import resolve_precision

CPU = DeviceInfo("cpu", "CPU")
TINY = dict(model_size="tiny", max_seq_len=32, batch_size=8, val_split=0.02, log_every_n_steps=1)


def cpu_decision(device=CPU, mixed=False):
    return resolve_precision(mixed, "auto", device)


def test_estimate_of_the_default_config_is_cheap_and_adds_up(tmp_path):
    config = WizardConfig(output_dir=str(tmp_path / "run"))
    estimate = estimate_config(config, cpu_decision())  # its cost is measured in bench/, not asserted here
    assert estimate.seconds_per_step > 0 and estimate.seconds_per_validation > 0
    batches = math.ceil(len(range(estimate.total_steps)) / config.max_epochs)  # one epoch's optimizer steps
    assert estimate.total_steps == total_steps(config, batches)
    assert estimate.validations == config.max_epochs  # once per epoch (val_check_interval=1.0)
    assert estimate.total_seconds == estimate.total_steps * estimate.seconds_per_step + \
        estimate.validations * estimate.seconds_per_validation
    assert estimate.fits_memory and not estimate.memory_measured
    first, second = estimate.describe().splitlines()
    assert first.startswith("Estimate: ") and "s per optimizer step (32-true, batch 16 x 1 accumulation, timed on CPU)"\
        in first and first.endswith(": fits in one Colab session.")
    # On a CPU the answer is the process's peak: the RAM holds Python, torch and the data beside the model.
    assert second.startswith("Memory: the process peaks at about ") and "at batch_size=16, fits in this machine's RAM"\
        in second
    assert estimate.memory.process_bytes > 0


def test_accumulation_multiplies_the_forward_backward_and_the_run_has_fewer_steps(tmp_path):
    base = WizardConfig(**TINY, max_steps=None, max_epochs=1, output_dir=str(tmp_path / "run"))
    one, four = (estimate_config(base.replace(gradient_accumulation_steps=a), cpu_decision()) for a in (1, 4))
    assert four.total_steps == math.ceil(one.total_steps / 4)
    # About 4x in a quiet machine; only the floor is asserted: two separately timed estimates on a shared
    # machine measured 7-8x under load (speed is benchmarked in bench/estimate_accuracy.py, not here).
    assert four.seconds_per_step / one.seconds_per_step > 1.5
    assert (one.accumulation, four.accumulation) == (1, 4)


def test_a_batch_that_does_not_fit_is_answered_with_the_largest_that_does(tmp_path):
    config = WizardConfig(**{**TINY, "batch_size": 64}, gradient_accumulation_steps=2, output_dir=str(tmp_path / "run"))
    roomy = estimate_config(config, cpu_decision())
    memory = roomy.memory
    # A device whose memory holds 10 sequences' activations beyond the weights, at 90% usable.
    small = DeviceInfo("cpu", "Small CPU", None, int((memory.fixed_bytes + 10.5 * memory.per_sequence_bytes) / 0.9))
    estimate = estimate_config(config, cpu_decision(small))
    assert estimate.memory.largest_batch(64) == 10
    assert not estimate.fits_memory
    assert (estimate.suggested_batch_size, estimate.suggested_accumulation) == (8, 16)  # 8 x 16 = 64 x 2
    assert (estimate.batch_size, estimate.accumulation) == (8, 16)  # the time is for the batch that fits
    assert "does NOT fit in Small CPU memory" in estimate.describe()
    assert ("The largest batch that fits is 10: batch_size=8 with gradient_accumulation_steps=16 keeps the "
            "effective batch") in estimate.describe()


def test_largest_batch_by_binary_search_and_none_when_one_sequence_is_too_much():
    memory = MemoryModel(fixed_bytes=1000, per_sequence_bytes=100, capacity_bytes=2000, capacity_name="x")
    assert memory.largest_batch(64) == 8  # 1000 + 8 x 100 = 1800 <= 0.9 x 2000
    assert MemoryModel(3000, 100, 2000, "x").largest_batch(64) == 0


def test_a_run_longer_than_a_colab_session_says_checkpoints_carry_it():
    memory = MemoryModel(1, 1, None, "RAM (not checked on this OS)")
    long = Estimate("CPU", "32-true", 16, 1, 2.0, COLAB_SESSION_SECONDS // 2, 3, 10.0, 100, False, memory, 16)
    assert not long.fits_session
    assert "longer than a Colab session (12 h at most): checkpoints carry it across sessions" in long.describe()
    assert "= about 12 h 00 min" in long.describe()


def test_the_estimate_leaves_the_model_and_the_random_state_untouched(tmp_path):
    config = WizardConfig(**TINY)
    torch.manual_seed(0)
    model = build_model(config, 64, 0, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    estimate_run(config, cpu_decision(), model, build_task(config), 64, 0, train_batches=10, val_batches=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_validations_follow_the_interval_and_max_steps():
    config = WizardConfig(max_epochs=3, val_check_interval=0.5)
    assert count_validations(config, train_batches=10, steps=30) == 6
    assert count_validations(config, train_batches=10, steps=15) == 4  # 3 in 1.5 epochs, and one at max_steps


def test_train_prints_the_memory_before_and_the_time_after_its_first_steps_and_the_summary_compares(tmp_path,
                                                                                                       capsys):
    result = train(WizardConfig(**TINY, max_steps=6, output_dir=str(tmp_path / "run")), device=CPU)
    out = capsys.readouterr().out.splitlines()
    model_line = next(i for i, line in enumerate(out) if line.startswith("Model: "))
    assert out[model_line + 1].startswith("Inspection: ")  # train()'s pre-flight checks, then the memory answer
    assert out[model_line + 2].startswith("Memory: the process peaks at about ")
    estimate_line = next(i for i, line in enumerate(out) if line.startswith("Estimate: "))
    assert estimate_line > next(i for i, line in enumerate(out) if line.startswith("Batch: "))  # after training began
    assert "timed on this run's steps 2-4 on CPU); 6 steps + 1 validation(s)" in out[estimate_line]
    assert result.estimate.total_steps == 6
    line = next(line for line in result.summary().splitlines() if line.startswith("time (estimated): "))
    assert f"{result.estimate.seconds_per_step:.3g} s/step" in line
    assert f"actual {result.train_seconds / 6:.3g} s/step" in line
    assert 0 < result.train_seconds < result.fit_seconds


def test_train_refuses_a_batch_that_does_not_fit_before_writing_anything(tmp_path):
    """The device's memory is injected (a DeviceInfo with total_memory_bytes): this machine's RAM would fit it."""
    config = WizardConfig(**{**TINY, "batch_size": 64}, gradient_accumulation_steps=2, output_dir=str(tmp_path / "run"))
    memory = estimate_config(config, cpu_decision()).memory
    small = DeviceInfo("cpu", "Small CPU", None, int((memory.fixed_bytes + 10.5 * memory.per_sequence_bytes) / 0.9))
    with pytest.raises(BatchTooLargeError) as raised:
        train(config, device=small)
    message = str(raised.value)
    # An injected device's memory holds the model's memory alone (this machine's RAM holds the whole process).
    need = memory.fixed_bytes + 64 * memory.per_sequence_bytes
    assert message.startswith(f"batch_size=64 needs about {_bytes(need)} for training, more than "
                              f"Small CPU memory ({_bytes(small.total_memory_bytes)}, 90% usable). ")
    assert message.endswith("The largest batch that fits is 10: batch_size=8 with gradient_accumulation_steps=16 "
                            "keeps the effective batch.")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["data_cache"]  # no config.json, tokenizer/, checkpoints


def test_a_huge_batch_is_refused_with_the_batch_that_fits():
    memory = MemoryModel(fixed_bytes=10**6, per_sequence_bytes=10**5, capacity_bytes=16 * 2**30, capacity_name="RAM")
    config = WizardConfig(batch_size=1_000_000_000, gradient_accumulation_steps=1)
    with pytest.raises(BatchTooLargeError, match=r"^batch_size=1000000000 needs about 90\.9 TB for training, more "
                                                 r"than RAM \(16\.0 GB, 90% usable\)\. The largest batch that fits is "
                                                 r"154608: batch_size=\d+ with gradient_accumulation_steps=\d+ keeps"):
        check_memory(memory, config)


def watch_copies(model) -> list:
    """Weak references to every copy of model that runs a forward pass, and to its parameters: deepcopy
    carries the hook along (a plain function is copied by reference, so every copy appends to one list)."""
    refs = []

    def seen(module, args, kwargs):
        if not any(ref() is module for ref in refs):
            refs.append(weakref.ref(module))
            refs.extend(weakref.ref(p) for p in module.parameters())

    model.register_forward_pre_hook(seen, with_kwargs=True)
    return refs


def _live_tensors() -> set[int]:
    return {id(o) for o in gc.get_objects() if issubclass(type(o), torch.Tensor)}  # type(): no __class__ lookups


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_the_estimate_frees_what_it_allocated_without_the_garbage_collector(precision):
    """On a GPU what the estimate allocates must be gone before training starts: `del` and empty_cache() free only
    what no reference cycle keeps (a lambda over its own stepper did, under mixed precision)."""
    config = WizardConfig(**TINY)
    torch.manual_seed(0)
    model = build_model(config, 64, 0, 0)
    decision = resolve_precision(True, precision, CPU)  # CPU autocast in fp16 (with a CPU GradScaler) or bf16
    task = build_task(config)
    estimate_run(config, decision, model, task, 64, 0, train_batches=10, val_batches=2)  # first-call caches
    refs = watch_copies(model)
    gc.collect()
    before = _live_tensors()
    gc.disable()  # only reference counting frees anything now, as it does at once on a GPU
    try:
        estimate_run(config, decision, model, task, 64, 0, train_batches=10, val_batches=2)
        after = _live_tensors()
        alive = [ref for ref in refs if ref() is not None]
    finally:
        gc.enable()
    # Only the model itself ran (no copy of it is made any more: issue 28 item 3), and nothing it allocated lives on.
    assert len(refs) == len(alive) == 1 + len(list(model.parameters()))
    assert after - before == set()


def test_fsdp_shards_the_memory_so_a_model_too_large_for_one_device_is_not_refused():
    """Under strategy="fsdp" each of the 4 processes holds a quarter of the weights, gradients and AdamW state,
    plus the block it gathers whole. The device's memory is injected (a GPU between what one shard and what the
    whole model needs); the activations are measured on the model where it is (this CPU), so no GPU is touched."""
    from utils.training.estimate import BYTES_PER_PARAMETER, largest_fsdp_unit, measure_memory

    config = WizardConfig(**TINY, strategy="fsdp", devices=4)
    model = build_model(config, 64, 0, 0)
    parameters = sum(p.numel() for p in model.parameters())
    state = parameters * BYTES_PER_PARAMETER

    def measure(capacity: int):
        gpu = DeviceInfo("cuda", "Injected GPU", (8, 0), capacity)
        return measure_memory(config, resolve_precision(True, "auto", gpu), model, build_task(config), 64, 0,
                              world_size=4)

    probe = measure(10**12)
    shard_need, whole_need = probe.bytes_at(8), probe.whole().bytes_at(8)
    memory = measure(int((shard_need + whole_need) / 2 / 0.9))  # 90% of it usable: between the two
    assert memory.shards == 4 and (memory.bytes_at(8), memory.whole().bytes_at(8)) == (shard_need, whole_need)
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.blocks]  # a template's FSDP units
    assert largest_fsdp_unit(model) == max(blocks + [parameters - sum(blocks)])  # the rest: embeddings, head
    assert whole_need - shard_need == state - math.ceil(state / 4) - 8 * largest_fsdp_unit(model) > 0
    check_memory(memory, config)  # a quarter of the state fits
    with pytest.raises(BatchTooLargeError):  # the whole model on one device, as it was counted before, does not
        check_memory(memory.whole(), config)


def test_the_estimate_says_compile_adds_time_it_does_not_count():
    config = WizardConfig(**TINY, compile=True)
    model = build_model(config, 64, 0, 0)
    estimate = estimate_run(config, cpu_decision(), model, build_task(config), 64, 0, train_batches=10, val_batches=2)
    assert estimate.describe().splitlines()[2] == (
        "Compile: torch.compile is on, so the run's first steps also compile the model (often tens of seconds, "
        "minutes for a large one); that time is not in the estimate above.")
    plain = estimate_run(config.replace(compile=False), cpu_decision(), model, build_task(config), 64, 0,
                         train_batches=10, val_batches=2)
    assert len(plain.describe().splitlines()) == 2


def test_a_sequence_length_that_cannot_fit_is_refused_before_the_slow_measurement(tmp_path, capsys):
    """max_seq_len=40000 used to print nothing for minutes after the Model line: the memory measurement ran two
    training steps of 40,000 tokens. A short step, scaled to the length (memory grows at least linearly with it),
    refuses what cannot fit at once; what may fit is measured after a line saying so. The device is one of 256 MB
    (a DeviceInfo; the check reads its memory) so that the refusal does not depend on this machine's RAM."""
    small = DeviceInfo("cpu", "CPU", total_memory_bytes=256 * 2**20)
    config = WizardConfig(max_seq_len=40_000, batch_size=1, max_steps=1, output_dir=str(tmp_path / "run"))
    with pytest.raises(BatchTooLargeError, match=r"max_seq_len=40000 needs at least .* for one sequence, more than "
                                                 r"CPU memory \(256.0 MB, 90% usable\); lower max_seq_len"):
        train(config, device=small)
    assert "Memory: measuring" not in capsys.readouterr().out
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------ one counting (issue 28, items 3, 8 and 12)

T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 << 30)  # injected: the capacity and precision a T4 run gets


def test_a_1b_lora_at_1024_tokens_is_not_refused_on_a_t4(monkeypatch):
    """Llama-3.2-1B's published config with LoRA adapters, built on the meta device (shapes, no memory, no weights)
    in the base dtype a T4 run stores it in. The old check counted the frozen base at 16 B a parameter (19.8 GB:
    refused) and deep-copied it to cuda. transformers' check for packed sequences reads a tensor's value, which a
    meta tensor has not: it is stubbed (as no sequences are packed here), nothing of the kit's."""
    import transformers.masking_utils

    from utils.models.adapters import apply_adapters, meta_model
    from utils.training.estimate import check_sequence_length
    from utils.training.fit_plan import plan, shape_of
    from utils.plan.memory import parameter_bytes

    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    decision = resolve_precision(True, "auto", T4)
    base = meta_model(str(REPO_ROOT / "tests/fixtures/hf_configs/llama-3.2-1b")).to(decision.base_dtype)
    paper = plan(shape_of(base), "lora", 1, 1024)
    config = WizardConfig(model_source="pretrained", pretrained_model="x", finetune_method="lora", max_seq_len=1024)
    with torch.device("meta"):
        model = apply_adapters(base, config)
    # The frozen base at its 2 bytes, the adapters at 16: the figure the paper model gives for the same config.
    assert parameter_bytes(model) == paper.weight_bytes + paper.adapter_bytes
    assert parameter_bytes(model) < 2.7e9
    check_sequence_length(config, decision, model, build_task(config), 128256, 0)  # not refused


def test_the_memory_checks_measure_the_model_itself_never_a_copy(monkeypatch):
    """A full fine-tune (every weight trains): check_sequence_length, measure_memory and the timed estimate used to
    deep-copy the whole model; a copy of a multi-GB model is what ran the device (or host) out of memory."""
    import copy

    from utils.training.estimate import check_sequence_length, measure_memory

    deepcopy = copy.deepcopy

    def refuse(obj, *args, **kwargs):  # a config's replace() deep-copies its fields: only a module is refused
        if isinstance(obj, torch.nn.Module):
            raise AssertionError(f"copy.deepcopy({type(obj).__name__}) was called")
        return deepcopy(obj, *args, **kwargs)

    config = WizardConfig(**{**TINY, "max_seq_len": 600})
    torch.manual_seed(0)
    model = build_model(config, 64, 0, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = build_task(config)
    monkeypatch.setattr(copy, "deepcopy", refuse)
    short = config.replace(max_seq_len=32)
    check_sequence_length(config, cpu_decision(), model, task, 64, 0)
    measure_memory(config, cpu_decision(), model, task, 64, 0)
    estimate_run(short, cpu_decision(), model, task, 64, 0, train_batches=4, val_batches=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the timed steps put them back


def test_the_loss_backward_on_the_logits_is_counted():
    """A 32,000-word vocabulary on a small model: the logits dominate. The loss keeps fp32 log-probabilities (4 B a
    logit, a saved tensor) and its backward holds two fp32 gradients of them at once (8 B more): the old count saw
    the 4 B alone, a third of what the GPU needs."""
    from utils.training.estimate import measure_memory
    from utils.plan.memory import LOGIT_BYTES

    config = WizardConfig(**{**TINY, "max_seq_len": 64})
    model = build_model(config, 32000, 0, 0)
    memory = measure_memory(config, cpu_decision(), model, build_task(config), 32000, 0)
    logits = 64 * 32000
    assert LOGIT_BYTES == 12
    assert memory.per_sequence_bytes >= LOGIT_BYTES * logits
    assert memory.per_sequence_bytes < (LOGIT_BYTES + 4) * logits  # the rest: the small model's own activations


def test_gradient_checkpointing_counts_the_block_recomputed_in_the_backward():
    """A small Llama (4 blocks, a wide MLP, a small vocabulary so that the logits do not hide it) with LoRA. Under
    checkpointing the forward keeps each block's input only, but the backward brings one block's activations back:
    the old count left that block out (a quarter of the blocks' activations here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from utils.models.adapters import apply_adapters, enable_checkpointing
    from utils.training.estimate import measure_memory

    config = WizardConfig(model_source="pretrained", pretrained_model="x", finetune_method="lora", max_seq_len=64)
    torch.manual_seed(0)
    model = apply_adapters(LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4)), config)
    task, decision = build_task(config), cpu_decision()
    whole = measure_memory(config, decision, model, task, 256, 0).per_sequence_bytes
    enable_checkpointing(model)
    checkpointed = measure_memory(config, decision, model, task, 256, 0).per_sequence_bytes
    assert whole / 4 < checkpointed < whole / 2  # one block alive again, not four
    assert all(m.gradient_checkpointing for m in model.base_model.model.model.layers)  # the flag is put back


class _OutOfMemoryAbove:
    """A task whose training step raises CUDA's out-of-memory error above a batch size: it stands in for a GPU
    (none here) whose allocator fails where the memory model expected a batch to fit."""

    def __init__(self, task, limit: int):
        self.task, self.limit = task, limit

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        if batch[0].shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.task.loss(model, batch)


def test_train_s_estimate_refuses_a_batch_its_timed_step_ran_out_of_memory_at():
    """The memory model said batch 16 fits, the timed step ran out of memory: train() (refuse_oversize=True) must
    not start at batch 16, but say which batch trained."""
    config = WizardConfig(**{**TINY, "batch_size": 16})
    model = build_model(config, 64, 0, 0)
    roomy = MemoryModel(fixed_bytes=10**6, per_sequence_bytes=10**3, capacity_bytes=2**40, capacity_name="RAM")
    task = _OutOfMemoryAbove(build_task(config), limit=4)
    with pytest.raises(BatchTooLargeError, match=r"^batch_size=16 ran out of CPU memory in a timed training step .*; "
                                                 r"batch_size=4 with gradient_accumulation_steps=4 trained there"):
        estimate_run(config, cpu_decision(), model, task, 64, 0, train_batches=10, val_batches=2, memory=roomy,
                     refuse_oversize=True)
    shown = estimate_run(config, cpu_decision(), model, task, 64, 0, train_batches=10, val_batches=2, memory=roomy)
    assert (shown.suggested_batch_size, shown.suggested_accumulation) == (4, 4)  # the wizard shows what fits


def test_estimate_gpu_measures_a_template_here_in_that_gpu_s_precision(tmp_path, capsys):
    """`estimate --gpu t4` on this CPU: the template is built and measured here under fp16 autocast (a T4's
    precision), against a T4's 15 GB; a batch that does not fit is one line naming the batch that does (exit 2)."""
    from utils.cli import main

    settings = ["--set", "model_size=tiny", "--set", "max_seq_len=64", "--set", f"output_dir={tmp_path / 'run'}"]
    assert main(["estimate", "--gpu", "t4", *settings]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Precision on Tesla T4 (compute capability 7.5): 16-mixed")
    assert out[1].startswith("Fits: about ") and out[1].endswith(
        "at batch_size=16 x 64 tokens (measured on this machine in 16-mixed), within Tesla T4 (15.0 GB, 90% usable).")
    assert main(["estimate", "--gpu", "t4", *settings, "--set", "batch_size=100000"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: batch_size=100000 needs about ")
    assert "more than Tesla T4 memory (15.0 GB, 90% usable). The largest batch that fits is " in err[0]
    assert not (tmp_path / "run").exists()  # nothing written into output_dir


def test_estimate_gpu_measures_a_lora_whose_weights_are_here_without_copying_it(tmp_path, capsys, monkeypatch,
                                                                               llama_folder):
    """A tiny Llama with its weights in a folder, LoRA: `estimate --gpu t4` builds it as a T4 run would (the base in
    fp16) and measures it on this CPU under fp16 autocast, without a copy of the model."""
    import copy

    from tests.conftest import corpus_start
    from utils.cli import main

    folder = llama_folder
    deepcopy = copy.deepcopy

    def refuse(obj, *args, **kwargs):  # a config's replace() deep-copies its fields: only a module is refused
        if isinstance(obj, torch.nn.Module):
            raise AssertionError(f"copy.deepcopy({type(obj).__name__}) was called")
        return deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", refuse)
    settings = {"model_source": "pretrained", "pretrained_model": str(folder), "finetune_method": "lora",
                "dataset_source": "file", "dataset_path": str(corpus_start(tmp_path / "data", 8_000)),
                "max_seq_len": 32, "batch_size": 4, "output_dir": str(tmp_path / "run")}
    assert main(["estimate", "--gpu", "t4", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("Fits: about ") and "(measured on this machine in 16-mixed)" in out[-1]


class _OutOfMemoryAboveModel(torch.nn.Module):
    """A model whose training forward raises CUDA's out-of-memory error above a batch size: it stands in for a GPU
    (none here) whose allocator fails where the memory model expected the batch to fit."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if x.shape[0] > self.limit and torch.is_grad_enabled():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_a_first_step_that_runs_out_of_memory_is_reported_as_the_batch_being_too_large(tmp_path):
    """The memory model accepted batch 16; the run's first training step runs out of memory (simulated: no GPU
    here). train() no longer times steps before the run, so that step is the first to find it: it must say the batch
    is too large and name a smaller one, not end in the allocator's traceback."""
    config = WizardConfig(**{**TINY, "batch_size": 16}, max_steps=2, inspect=False, output_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = _OutOfMemoryAboveModel(build_model(config, 256, 0, 0), limit=4)  # room for the tokenizer's ids
    with pytest.raises(BatchTooLargeError, match=r"^batch_size=16 ran out of CPU memory in training step 1 \(the "
                                                 r"memory model said about .*\); batch_size=8 with "
                                                 r"gradient_accumulation_steps=2 keeps the effective batch\.$"):
        train(config, model=model, device=CPU)
    assert not (tmp_path / "run" / "checkpoints").exists()
