"""The run folder (a training run's output_dir), storage only: its layout, resume planning and archive
(checkpoints), the lock a training run holds (lock), the metric history (history) and the atomic checkpoint
writer (checkpoint_io). Loading a finished run for inference or export is utils.loading, which depends on this
package, never the reverse."""
