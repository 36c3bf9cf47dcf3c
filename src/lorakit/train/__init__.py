"""Training: data (data.py), the loop (trainer.py), checkpoints and resume (state.py), tasks and metrics."""
