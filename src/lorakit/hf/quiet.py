"""The CLI prints its own progress: silence transformers' download bars and load reports."""

from __future__ import annotations

from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
