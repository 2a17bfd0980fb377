"""The Lightning callbacks of a training run: the per-step record and progress bar (recorder), the loss
and fp16 health checks (health), and last.ckpt on a clock and on Stop/SIGTERM (last_checkpoint)."""
