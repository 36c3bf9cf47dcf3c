"""One method's run, as the demo compares it: the numbers of its summary plus what the hints read (its steps, lr
and train-loss curve)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHOD_TITLES = {"probe": "probe", "lora": "LoRA", "full": "full FT"}


@dataclass(frozen=True)
class MethodResult:
    method: str  # probe | lora | full
    test_accuracy: float | None  # scored once after training, with the final weights
    validation_accuracy: float | None
    validation_loss: float | None
    trainable_params: int
    total_params: int
    saved_bytes: int  # the adapter (lora), the head (probe), every weight (full)
    train_s: float  # the trainer's clock: steps and validation
    wall_s: float  # the whole process: start-up, model load, training, test
    peak_rss_mb: float  # of the process that trained it (each method has its own)
    steps: int
    epochs: int
    lr: float
    train_losses: tuple[float, ...]  # one per logged optimizer step
    output_dir: str

    @property
    def title(self) -> str:
        return METHOD_TITLES.get(self.method, self.method)

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable_params / max(self.total_params, 1)

    @classmethod
    def from_run(cls, method: str, summary: dict[str, Any], train_losses: list[float], wall_s: float,
                 epochs: int, lr: float) -> MethodResult:
        final, test = summary.get("final_eval") or {}, summary.get("test_eval") or {}
        return cls(
            method=method, test_accuracy=test.get("accuracy"), validation_accuracy=final.get("accuracy"),
            validation_loss=final.get("loss"), trainable_params=int(summary["trainable_params"]),
            total_params=int(summary["total_params"]), saved_bytes=int(summary["adapter_bytes"]),
            train_s=float(summary["time_s"]), wall_s=wall_s, peak_rss_mb=float(summary["peak_rss_mb"]),
            steps=int(summary["steps"]), epochs=epochs, lr=lr, train_losses=tuple(train_losses),
            output_dir=str(summary["output_dir"]),
        )
