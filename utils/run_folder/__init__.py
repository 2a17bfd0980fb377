"""The run folder (a training run's output_dir): its layout, resume planning and archive (checkpoints),
the lock a training run holds (lock), the metric history (history), loading a finished run (loading) and
the atomic checkpoint writer (checkpoint_io)."""
