"""utils.amp_benchmark: fp32 against mixed precision through the one training core (CPU here)."""

import math

import pytest

from utils.amp_benchmark import AmpBenchmark, BenchmarkRow, mixed_precision_for, run_amp_benchmark
from utils.config import WizardConfig
from utils.env import DeviceInfo

CPU = DeviceInfo("cpu", "CPU")
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15 * 2**30)  # stands in for a GPU this machine lacks
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40 * 2**30)
P100 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0), 16 * 2**30)


def test_mixed_precision_is_what_the_training_core_would_pick_or_fp16():
    assert mixed_precision_for(T4) == "16-mixed"
    assert mixed_precision_for(A100) == "bf16-mixed"
    assert mixed_precision_for(CPU) == "16-mixed"  # the CPU fp16 + GradScaler path, measured anyway
    assert mixed_precision_for(P100) == "16-mixed"


@pytest.mark.slow
def test_benchmark_trains_fp32_then_fp16_on_cpu_and_says_what_it_measured(tmp_path):
    config = WizardConfig(max_steps=4, max_seq_len=32, batch_size=4, val_split=0.02, log_every_n_steps=1,
                          output_dir=str(tmp_path / "unused"))
    report = run_amp_benchmark(config, device=CPU, warmup_steps=1)
    assert [r.precision for r in report.rows] == ["32-true", "16-mixed"]
    assert (report.steps, report.timed_steps) == (4, 3)
    for row in report.rows:
        assert row.steps_per_sec > 0 and row.peak_memory_bytes > 2**20
        assert row.tokens_per_sec == pytest.approx(row.steps_per_sec * 4 * 32)
        assert math.isfinite(row.train_loss) and math.isfinite(row.val_loss)
    fp32, fp16 = report.rows
    assert fp16.val_loss == pytest.approx(fp32.val_loss, rel=0.02)  # same seed and data: near-equal after 4 steps
    assert "RSS" in report.memory_kind
    verdict = report.verdict()
    assert verdict.startswith("Measured on CPU, not a GPU: fp16 autocast + GradScaler ran ")
    assert "does not predict what mixed precision gains on a GPU" in verdict
    assert "fp32" in report.table() and "fp16 autocast + GradScaler" in report.table()
    assert not (tmp_path / "unused").exists(), "benchmark checkpoints go to a temporary folder"


def test_verdict_on_a_gpu_reports_speedup_memory_and_loss_parity():
    rows = [BenchmarkRow("32-true", 2.0, 16384, 4 * 2**30, 2.50, 2.40),
            BenchmarkRow("16-mixed", 5.0, 40960, 2 * 2**30, 2.51, 2.46)]
    report = AmpBenchmark(T4, 100, 95, "torch.cuda.max_memory_allocated (tensors on the GPU)", rows)
    assert report.verdict() == (
        "On Tesla T4 (compute capability 7.5), fp16 autocast + GradScaler ran 2.50x the steps/s of fp32 with "
        "0.50x its peak memory; after 100 steps the validation loss is 2.4600 against 2.4000 in fp32 (+2.50%).")
    assert "speed averaged over steps 6-100 of 100" in report.table()


def test_benchmark_needs_a_step_count():
    with pytest.raises(ValueError, match="max_steps is None"):
        run_amp_benchmark(WizardConfig(), device=CPU)
    with pytest.raises(ValueError, match=r"warmup_steps=4 must be in \[0, max_steps=4\)"):
        run_amp_benchmark(WizardConfig(max_steps=4), device=CPU, warmup_steps=4)


def test_on_a_cpu_the_benchmark_shrinks_to_about_a_minute_and_says_so(capsys):
    from utils.amp_benchmark import CPU_SIZES, fit_to_device

    gpu_sizes = WizardConfig(model_size="small", batch_size=32, max_seq_len=256, max_steps=100)
    assert fit_to_device(gpu_sizes, T4) == gpu_sizes  # a GPU keeps the sizes where AMP's effect shows
    assert capsys.readouterr().out == ""
    shrunk = fit_to_device(gpu_sizes, CPU)
    assert {k: getattr(shrunk, k) for k in CPU_SIZES} == CPU_SIZES
    out = capsys.readouterr().out
    assert out.startswith("No GPU on this runtime (CPU): the benchmark runs at model_size=tiny, batch_size=8, "
                          "max_seq_len=64, max_steps=50")
    assert "so both runs finish in about a minute" in out
