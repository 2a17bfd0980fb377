"""Callbacks the training core always installs: the run's record of every step, and the max_steps stop."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from utils.run_folder.history import write_segment_start


@dataclass
class StepRecord:
    """One optimizer step, as the loggers receive it."""

    step: int  # global step after this optimizer step (1 for the first)
    metrics: dict  # "train/loss" (mean over the step's micro-batches), "lr", and with fp16 "amp/loss_scale",
    # "amp/skipped_steps"; every log_every_n_steps "grad_norm" (before clipping); at each flush "tokens_per_sec"
    # since the previous flush and, on a GPU, "gpu_peak_memory_gib"
    skipped: Optional[bool] = None  # fp16: the GradScaler skipped this step (inf/NaN gradients); None without a scaler


class RunRecorder(pl.Callback):
    """Records each optimizer step's metrics once, validation metrics once per validation, and the
    run's throughput, and sends them through Lightning's loggers.

    The values stay on the device until a flush (every `flush_every` optimizer steps, before each
    validation, at each epoch end, before each checkpoint and when training ends), which reads them
    back in one transfer: no host sync per step. Listeners (the health check) see every flushed
    step in order. The counters live in every checkpoint, so a resumed run's throughput is the
    whole run's, and each stretch of training marks where it started in its log folder
    (utils.run_folder.history).

    With several processes each flush is also where they meet: the step values are averaged over
    them (each process's loss is the mean over its equal share of the batch, so the average is the
    whole batch's loss) and the tokens summed, so every process records and checks the same numbers
    and the throughput is all of theirs. Every process flushes at the same steps, so these
    collectives line up.
    """

    def __init__(self, tokens_in_batch: Callable, flush_every: int, precision: str = ""):
        self.tokens_in_batch = tokens_in_batch  # batch -> tokens trained on (an int, or a tensor on the device)
        self.flush_every = flush_every
        self.precision = precision  # Lightning's precision string, logged once per epoch
        self.listeners: list[Callable] = []  # listener(trainer, records) after each flush, in step order
        self.tokens = 0  # in the whole run, resumed stretches included
        self.train_seconds = 0.0
        self.skipped_total = 0  # steps the GradScaler skipped in the whole run
        self.last_loss: Optional[float] = None  # the newest flushed training loss (the progress bar shows it)
        self.start_step = None  # global step when this call's training started; None: it never started
        self.start_seconds = 0.0  # train_seconds when this call's training started (a resume loads earlier ones)
        self.start_tokens = 0  # tokens when this call's training started
        self.planned_steps: Optional[int] = None  # optimizer steps the run is set to take (max_steps, epochs)
        self._pending: list[tuple[int, dict, float, Optional[torch.Tensor]]] = []  # (step, device values, lr, skipped)
        self._sums: dict[str, torch.Tensor] = {}  # this step's micro-batch values so far
        self._micro = 0
        self._tokens_on_device = 0
        self._scale_before: Optional[torch.Tensor] = None
        self._step_seen = -1
        self._t0 = None
        self._flushed_clock = 0.0  # training seconds at the previous flush, for tokens_per_sec between flushes
        self._speed_tokens = 0  # tokens trained since then

    @property
    def tokens_per_sec(self) -> float:
        """The whole run's throughput, resumed stretches included."""
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def seconds_this_call(self) -> float:
        """Training seconds of the steps this process ran (a resume loads the earlier ones into train_seconds)."""
        return self.train_seconds - self.start_seconds

    @property
    def tokens_per_sec_this_call(self) -> float:
        seconds = self.seconds_this_call
        return (self.tokens - self.start_tokens) / seconds if seconds > 0 else 0.0

    # ------------------------------------------------------------------ recording
    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = self._step_seen = trainer.global_step
        planned = trainer.estimated_stepping_batches  # max_steps, or max_epochs of batches over the accumulation
        self.planned_steps = int(planned) if math.isfinite(planned) else None
        self.start_seconds = self._flushed_clock = self.train_seconds
        self.start_tokens = self.tokens
        # The clock starts here: a run resumed mid-epoch gets no on_train_epoch_start from Lightning, and
        # its steps until the epoch ends were once timed as 0 s.
        self._t0 = time.perf_counter()
        if trainer.is_global_zero and trainer.logger is not None and trainer.logger.log_dir:
            write_segment_start(trainer.logger.log_dir, trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._t0 is None:  # running since on_train_start in the first epoch
            self._t0 = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._scale_before = _scale_tensor(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens_on_device = self._tokens_on_device + self.tokens_in_batch(batch)
        for name, value in outputs.items():
            if name.startswith("train/"):  # training_step returns its metrics detached, beside "loss"
                self._sums[name] = self._sums.get(name, 0) + value.detach()
        self._micro += 1
        if trainer.global_step == self._step_seen:
            return  # an accumulation micro-batch: the optimizer has not stepped yet
        self._step_seen = trainer.global_step
        values = {name: total / self._micro for name, total in self._sums.items()}
        scale, skipped = _scale_tensor(trainer), None
        if scale is not None and self._scale_before is not None:
            values["amp/loss_scale"] = scale
            skipped = scale < self._scale_before  # GradScaler.update halves the scale exactly on a skipped step
        if getattr(pl_module, "grad_norm", None) is not None:  # the module took it before clipping, on the device
            values["grad_norm"], pl_module.grad_norm = pl_module.grad_norm, None
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        self._pending.append((trainer.global_step, values, lr, skipped))
        self._sums, self._micro, self._scale_before = {}, 0, None
        if trainer.global_step % self.flush_every == 0:
            self.flush(trainer)

    def flush(self, trainer) -> list[StepRecord]:
        """Read the pending steps back in one transfer, log them, and tell the listeners."""
        if _world_size(trainer) > 1:  # every process's tokens: the throughput is the run's, not one device's
            tokens = torch.as_tensor(self._tokens_on_device, device=trainer.strategy.root_device)
            self._tokens_on_device = trainer.strategy.reduce(tokens, reduce_op="sum")
        if isinstance(self._tokens_on_device, torch.Tensor):
            self._tokens_on_device = int(self._tokens_on_device)
        self.tokens += self._tokens_on_device
        self._speed_tokens += self._tokens_on_device
        self._tokens_on_device = 0
        if not self._pending:
            return []
        names = sorted({name for _, values, _, _ in self._pending for name in values})
        first = next((v for _, values, _, _ in self._pending for v in values.values()), None)
        missing = torch.tensor(float("nan"), device=first.device if first is not None else "cpu")
        rows = [torch.stack([values[n].float().reshape(()) if n in values else missing for n in names]
                            + [skipped.float().reshape(()) if skipped is not None else missing.new_tensor(-1.0)])
                for _, values, _, skipped in self._pending]
        table = torch.stack(rows)
        if _world_size(trainer) > 1:  # the mean over the processes' equal shares is the whole batch's value
            table = trainer.strategy.reduce(table, reduce_op="mean")
        table = table.tolist()  # the one read-back: a sync every flush, not every step
        records = []
        for (step, values, lr, _), row in zip(self._pending, table):
            metrics = {name: value for name, value in zip(names, row[:-1]) if name in values}  # grad_norm: some steps
            skipped = None if row[-1] < 0 else bool(row[-1])
            if lr is not None:
                metrics["lr"] = lr
            if skipped is not None:
                self.skipped_total += skipped
                metrics["amp/skipped_steps"] = float(self.skipped_total)
            records.append(StepRecord(step, metrics, skipped))
        self._pending = []
        records[-1].metrics.update(self._speed(trainer))
        self.last_loss = records[-1].metrics.get("train/loss", self.last_loss)
        for listener in self.listeners:
            listener(trainer, records)
        for logger in trainer.loggers:
            for record in records:
                logger.log_metrics(record.metrics, step=record.step)
            logger.save()
        return records

    def _speed(self, trainer) -> dict:
        """Tokens/s since the previous flush (its read-back has just waited for the device, so the clock is
        true) and a GPU's peak memory so far (a host-side counter: no sync)."""
        clock = self.train_seconds + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        elapsed, self._flushed_clock = clock - self._flushed_clock, clock
        speed = {"tokens_per_sec": self._speed_tokens / elapsed} if elapsed > 0 and self._speed_tokens else {}
        self._speed_tokens = 0
        device = getattr(getattr(trainer, "strategy", None), "root_device", None)
        if device is not None and device.type == "cuda":
            speed["gpu_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return speed

    # ------------------------------------------------------------------ when to flush
    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop_clock()
            self.flush(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=trainer.global_step)
            logger.save()
        if trainer.training:
            self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop_clock()
        self.flush(trainer)
        summary = {"amp/enabled": int(self.precision != "32-true"), "amp/precision": self.precision}
        for logger in trainer.loggers:
            logger.log_metrics(summary, step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush(trainer)
        for logger in trainer.loggers:
            logger.save()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.flush(trainer)  # the logs reach the checkpoint's step, and the health check sees every step in it

    # ------------------------------------------------------------------ checkpoint contents
    def state_dict(self) -> dict:
        self._lap()
        # planned_steps and precision let `runs` (utils.run_list) describe a run from its checkpoint alone.
        return {"tokens": self.tokens, "train_seconds": self.train_seconds, "skipped_total": self.skipped_total,
                "planned_steps": self.planned_steps, "precision": self.precision}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = state_dict.get("tokens", 0)
        self.train_seconds = state_dict.get("train_seconds", 0.0)
        self.skipped_total = state_dict.get("skipped_total", 0)

    def _lap(self) -> None:
        """Bank the running clock (a checkpoint is being written) and keep it running."""
        if self._t0 is not None:
            now = time.perf_counter()
            self.train_seconds += now - self._t0
            self._t0 = now

    def _stop_clock(self) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self._t0 = None


def _world_size(trainer) -> int:
    return getattr(trainer, "world_size", 1)


def _scale_tensor(trainer) -> Optional[torch.Tensor]:
    """A copy of the GradScaler's scale, still on the device (fp16 only; None without a scaler).

    GradScaler.get_scale() would wait for the device; its `_scale` tensor does not, and update()
    changes it in place, hence the clone.
    """
    scaler = getattr(getattr(getattr(trainer, "strategy", None), "precision_plugin", None), "scaler", None)
    scale = getattr(scaler, "_scale", None)
    return scale.detach().clone().reshape(()) if isinstance(scale, torch.Tensor) else None


class RecordedProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the recorder's newest flushed loss instead of reading the loss every step.

    Piped to a log (not a terminal, not a notebook) the bar is drawn by time, not every refresh_rate batches
    (fast steps would fill the log, slow ones leave it silent for minutes, which looks like a hang): after an
    epoch's first batch, then every LINE_SECONDS, and where the epoch ends, each drawing a line of its own.
    The validation bars are not drawn there: they sit on the line below and move the cursor back up with
    escape codes ("\x1b[A") that a log shows as they are.
    """

    LINE_SECONDS = 10.0  # piped: a progress line at least this often

    def __init__(self, recorder: RunRecorder, refresh_rate: int):
        super().__init__(refresh_rate=refresh_rate)
        self.recorder = recorder
        self._batches_done = 0  # in the current epoch; the bar may show fewer between refreshes
        self.piped = not (sys.stdout.isatty() or _in_a_kernel())
        if self.piped:
            self._refresh_rate = sys.maxsize  # Lightning's refresh then comes at the epoch's last batch only
        self._line_at = time.monotonic()  # when the last piped line ended
        self._line_n: Optional[int] = None  # the bar's count on that line

    @property
    def train_description(self) -> str:
        # The bar is created as training starts and, piped to a log, prints its first line then: say the epoch.
        return f"Epoch {self.trainer.current_epoch}"

    def init_train_tqdm(self) -> Tqdm:
        # Lightning's bar, made with the epoch's length: a run resumed mid-epoch gets no on_train_epoch_start
        # from Lightning, and its bar would read "Training: 100/?".
        return Tqdm(desc=self.train_description, total=convert_inf(self.total_train_batches),
                    position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
                    file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def init_sanity_tqdm(self) -> Tqdm:
        return self._quiet_when_piped(super().init_sanity_tqdm)

    def init_validation_tqdm(self) -> Tqdm:
        return self._quiet_when_piped(super().init_validation_tqdm)

    def _quiet_when_piped(self, make: Callable[[], Tqdm]) -> Tqdm:
        if not self.piped:
            return make()
        return Tqdm(disable=True, file=sys.stdout)  # made disabled: an enabled tqdm draws itself when created

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._end_line()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches_done = batch_idx + 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if not self.piped or bar is None or bar.disable:
            return
        if bar.n != self._batches_done and (bar.n == 0 or time.monotonic() - self._line_at >= self.LINE_SECONDS):
            bar.n = self._batches_done
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar
        if bar.n != self._line_n:  # redrawn, here or by Lightning's refresh_rate
            self._end_line()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch cut short (max_steps, Stop) ends between refreshes: piped to a log, a whole short run
        # would otherwise read "0/175". Show where it got to.
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and bar.n != self._batches_done:
            bar.n = self._batches_done
            bar.refresh()
        super().on_train_epoch_end(trainer, pl_module)
        self._end_line()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)  # redraws the training bar with the validation loss
        if not trainer.sanity_checking:
            self._end_line()

    def _end_line(self) -> None:
        """Piped: end the bar's line, so the log holds one line per redraw instead of carriage returns."""
        bar = self.train_progress_bar if self._train_progress_bar is not None else None
        if not self.piped or bar is None or bar.disable:
            return
        bar.fp.write("\n")
        bar.fp.flush()
        self._line_n, self._line_at = bar.n, time.monotonic()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if self.recorder.last_loss is not None:
            metrics["loss"] = f"{self.recorder.last_loss:.3f}"
        return metrics


def _in_a_kernel() -> bool:
    """Running in a Jupyter/Colab kernel (the bar draws in the browser), not merely with ipykernel imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class ValidateAtMaxSteps(pl.Callback):
    """Ends a max_steps run through Lightning's stop path, so the last step is validated and checkpointed.

    Lightning's own max_steps stop skips that final validation, leaving no best checkpoint and no
    validation loss for a run that ends mid-epoch.
    """

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.max_steps:
            trainer.should_stop = True
