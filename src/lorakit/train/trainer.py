"""The training loop: AdamW (+ LoRA+), warmup + decay, accumulation, clipping, bf16 autocast, evaluation, early
stopping, best-adapter tracking, atomic checkpoints and exact resume, DDP / FSDP under torchrun.

Each optimizer step takes a fixed set of examples (state.S.step_indices: a function of seed and step, so the step
count is the data position). Its loss is the SUM of per-unit losses over those examples divided by their count
of units (target tokens, or examples), so the gradient is the mean over the global batch however the batch is
split into micro-batches and processes.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lorakit.adapters import add_adapter, count_parameters
from lorakit.errors import ConfigError, LorakitError
from lorakit.hf.models import load_model
from lorakit.hf.paths import resolve_model_path
from lorakit.hf.tokenizer import load_tokenizer
from lorakit.inject import describe_oversized, find_targets, oversized_ranks
from lorakit.train import console, report
from lorakit.train import distributed as D
from lorakit.train import state as S
from lorakit.train.config import TrainConfig
from lorakit.train.data import build_datasets, build_test_set
from lorakit.train.heap import fix_mmap_threshold
from lorakit.train.hooks import TrainHook
from lorakit.train.methods import make_trainable, save_weights
from lorakit.train.metrics import MetricsLogger, check_sinks, read_metrics, truncate_after
from lorakit.train.optim import build_optimizer, build_scheduler
from lorakit.train.prepare import prepare_lora, resolve_config
from lorakit.train.run_folder import CONFIG_FILE, OutputDirError, RunFolder, describe_os_error
from lorakit.train.tasks import TASKS, evaluate
from lorakit.train.trackers import chosen_trackers
from lorakit.variants.training import attach_variants, save_trained_adapter, variant_lora_config, variant_summary


class NonFiniteLossError(LorakitError):
    """The loss (or the gradient norm) became NaN / Inf; the run stopped before the weights were updated."""


@dataclass
class TrainResult:
    output_dir: Path
    summary: dict[str, Any]
    final_eval: dict[str, float] | None
    is_main: bool = True  # False on the other processes of a distributed run


class Trainer:
    """One training run. Every start-up check (config, data, model, targets, sinks, the checkpoint to resume)
    runs before the output folder is touched, and a start that fails leaves the folder as it found it (see
    run_folder.py for the folder's life, including `output.overwrite`).

    check_only: stop once the checks have passed, writing nothing (`lorakit train --nproc N` runs this in the
    launcher, with world_size=N, so a bad config is one line before any worker starts)."""

    def __init__(self, cfg: TrainConfig, hooks: Sequence[TrainHook] = (), resume: bool | str | None = None,
                 check_only: bool = False, world_size: int | None = None) -> None:
        self.hooks = list(hooks)
        self._quiet = check_only  # the launcher's check: the workers say it all again
        self.dist = D.init_distributed(cfg.training.device, cfg.training.distributed)
        self._globals = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),  # restored at the end
                         torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            self._check_and_build(cfg, resume, world_size or self.dist.world_size)
            if not check_only and not self.finished:
                self._open_output(resume)
        except BaseException:
            self._restore_globals()
            raise
        if check_only or self.finished:
            self._restore_globals()

    # -- set-up: checks and building (reads only) ----------------------------------------------------------------
    def _check_and_build(self, cfg: TrainConfig, resume: bool | str | None, world_size: int) -> None:
        self.cfg = resolve_config(cfg)
        t, self.task = self.cfg.training, TASKS[self.cfg.model.task]
        self.out = Path(self.cfg.output.dir)
        self.folder = RunFolder(self.out, self.cfg.output.adapter_name)
        self.folder.check(bool(resume), self.cfg.output.overwrite, repair=self.dist.is_main)
        if t.metric in ("accuracy", "f1") and not self.task.classification:
            raise ConfigError(f"training.metric={t.metric!r} needs a seq-cls task; use loss or auto")
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
        torch.manual_seed(t.seed)
        model_dir = resolve_model_path(self.cfg.model.path, self.cfg.model.revision)  # a Hub id: its snapshot
        self.tokenizer = load_tokenizer(model_dir, self.cfg.model.trust_remote_code)
        train_set, val_set, self.data_stats = build_datasets(self.cfg.data, self.tokenizer)
        prepare = self.task.prepare
        self.train_set, self.val_set = [prepare(e) for e in train_set], [prepare(e) for e in val_set]
        labels = self.data_stats["labels"]
        if labels and self.cfg.data.labels is None:
            self.cfg.data.labels = list(labels)  # recorded in train_config.yaml: merge / eval rebuild the head
        if self.cfg.model.quantization and self.dist.device.type == "cpu":
            fix_mmap_threshold()  # QLoRA's memory: freed activations handed back to the OS (train/heap.py)
        base = load_model(self.cfg.model, model_dir, labels, self.tokenizer.pad_token_id,
                          self.dist.device)
        self.test_set = [prepare(e) for e in build_test_set(self.cfg.data, self.tokenizer, self.data_stats)]
        self.raw = self._with_adapter(base) if t.method == "lora" else make_trainable(base, t.method)
        self.raw.to(self.dist.device).train()
        if self.cfg.data.packing:  # the model must keep packed examples apart (refused in one line if not)
            self.task.check_packing(self.raw)
        self.model = D.wrap_model(self.raw, self.dist)
        self.global_batch = t.batch_size * t.grad_accum * world_size
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"the training set has {len(self.train_set)} examples, fewer than one global batch of "
                f"{self.global_batch} (training.batch_size x grad_accum x processes); lower training.batch_size"
            )
        if world_size > 1 and t.distributed == "fsdp" and (t.save_every or resume):
            raise ConfigError("training.distributed=fsdp does not write resumable checkpoints yet (the optimizer "
                              "state is sharded); use distributed=ddp with save_every / --resume")
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        # the variants' hooks first: their checkpointed states keep their places whatever hooks the caller adds
        mode = t.distributed if world_size > 1 else None
        if t.method == "lora":
            self.hooks = attach_variants(self.cfg, self.raw, self.total_steps, mode) + self.hooks
        self.optimizer = build_optimizer(self.raw, t)
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)
        self.progress = S.Progress()
        self.last_eval: dict[str, float] | None = None
        if self.dist.is_main:
            check_sinks(self.cfg.output)
        self.finished = False
        self._rng: dict | None = None
        self._resume(resume)

    def _with_adapter(self, base: torch.nn.Module) -> torch.nn.Module:
        self.cfg.lora = variant_lora_config(self.cfg, base, prepare_lora(self.cfg, base))
        oversized = oversized_ranks(base, self.cfg.lora, find_targets(base, self.cfg.lora))
        if oversized:
            raise ConfigError(f"lora: {describe_oversized(oversized)}. Set lora.r <= {min(oversized[0][2:])} (or "
                              "lower lora.rank_pattern for those layers)")
        # a copy goes into the model: a variant's hook may write into it (learned ranks), the run's config stays
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the oversized-rank warning: refused above already
            return add_adapter(base, copy.deepcopy(self.cfg.lora), self.cfg.output.adapter_name)

    def _resume(self, resume: bool | str | None) -> None:
        """Load the checkpoint to continue from (reads only; the metrics file is cut in _open_output)."""
        self.resume_step: int | None = None  # the metrics file keeps the records up to it
        if not resume:
            return
        self.resume_step = 0
        path = Path(resume) if isinstance(resume, str) else S.latest_checkpoint(self.out / S.CHECKPOINTS)
        if path is not None:
            ckpt = S.read_checkpoint(path)
            S.check_same_run(ckpt.state.get("config", ""), self.cfg.to_dict(), path)
        if not isinstance(resume, str) and self._finished_already():  # --resume-from a checkpoint: redo from there
            return
        if path is None:
            self._say(f"no checkpoint in {self.out / S.CHECKPOINTS}; starting from step 0")
            return
        S.load_trainable(self.raw, ckpt.tensors, path)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        self.scheduler.lr_lambdas[0].total = self.total_steps  # max_steps / epochs may grow on resume
        for hook, state in zip(self.hooks, ckpt.state.get("hooks", []), strict=False):
            hook.load_state_dict(state)
        self.progress = ckpt.progress
        rng = ckpt.state["rng"]
        self._rng = rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0]
        self.resume_step = self.progress.step
        self.last_eval = self._recorded_eval(self.progress.last_eval_step)
        self._say(f"resumed from {path} (step {self.progress.step} of {self.total_steps})")

    def _finished_already(self) -> bool:
        """A resumed run that had already finished (its summary.json says so, for these settings)."""
        summary_file, config_file = self.out / "summary.json", self.out / CONFIG_FILE
        if not (summary_file.is_file() and config_file.is_file()):
            return False
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            saved = config_file.read_text(encoding="utf-8")
        except (OSError, ValueError):
            return False
        if S.changed_settings(saved, self.cfg.to_dict()):
            return False
        done = summary.get("steps", -1) >= self.total_steps or bool(summary.get("stopped_early"))
        if done:
            self.finished, self.summary = True, summary
            self._say(f"the run in {self.out} already finished (step {summary.get('steps')} of {self.total_steps}); "
                      "nothing to do. Raise training.max_steps or training.epochs to train it further")
        return done

    def _recorded_eval(self, step: int) -> dict[str, float] | None:
        """The evaluation logged at `step` (a resumed run does not evaluate the same weights twice)."""
        if step < 0:
            return None
        found = [r for r in read_metrics(self.out / "metrics.jsonl") if r.get("kind") == "eval" and r["step"] == step]
        return {k: v for k, v in found[-1].items() if k not in ("step", "kind")} if found else None

    # -- set-up: the first writes ----------------------------------------------------------------------------------
    def _open_output(self, resume: bool | str | None) -> None:
        D.barrier(self.dist)  # every process checked before rank 0 writes
        if self.dist.is_main:
            self.folder.open(self.cfg.to_yaml(), fresh=not resume)
            try:
                if self.resume_step is not None:
                    self.folder.track("metrics.jsonl")
                    truncate_after(self.out / "metrics.jsonl", self.resume_step)
                for name in ("metrics.jsonl", "tensorboard", "wandb"):
                    self.folder.track(name)
                self.metrics = MetricsLogger(self.out, True, chosen_trackers(self.cfg.output),
                                             self.cfg.output.name_of_run(), self.cfg.to_dict())
            except BaseException as exc:
                self.folder.rollback()
                if isinstance(exc, OSError):
                    raise OutputDirError(describe_os_error(exc, self.out)) from None
                raise
            self.folder.clean_leftovers()
        else:
            self.metrics = MetricsLogger(self.out, False)
        torch.manual_seed(self.cfg.training.seed + self.dist.rank)  # dropout streams differ per process
        if self._rng is not None:
            S.restore_rng(self._rng)

    def _restore_globals(self) -> None:
        torch.set_num_threads(self._globals[0])
        torch.use_deterministic_algorithms(self._globals[1], warn_only=self._globals[2])

    def _say(self, message: str) -> None:
        if self.dist.is_main and not self._quiet:
            tqdm.write(f"lorakit train: {message}")

    def _autocast(self):
        mp, device = self.cfg.training.mixed_precision, self.dist.device
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        if mp == "bf16" or (mp == "auto" and bf16_ok):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _batch(self, examples: list) -> dict[str, torch.Tensor]:
        batch = self.task.collate(examples, self.tokenizer.pad_token_id)
        return {k: v.to(self.dist.device) for k, v in batch.items()}

    # -- one optimizer step -------------------------------------------------------------------------------------
    def _step(self, step: int) -> tuple[float, int, float | None]:
        t, world, rank = self.cfg.training, self.dist.world_size, self.dist.rank
        indices = S.step_indices(step, len(self.train_set), self.global_batch, t.seed)
        units = max(1, sum(self.task.loss_units(self.train_set[i]) for i in indices))  # the same on every rank
        loss_sum, extra_sum, tokens = 0.0, 0.0, 0
        for m in range(t.grad_accum):
            start = (m * world + rank) * t.batch_size
            batch = self._batch([self.train_set[i] for i in indices[start:start + t.batch_size]])
            with D.no_sync(self.model, m == t.grad_accum - 1):
                with self._autocast():
                    micro_sum = self.task.loss_sum(self.model, batch)
                loss = micro_sum * (world / units)  # DDP averages gradients over processes: undo the 1/world
                for hook in self.hooks:
                    extra = hook.extra_loss(self.raw, step)
                    if extra is not None:
                        loss = loss + extra / t.grad_accum
                        extra_sum += extra.item() / t.grad_accum
                loss.backward()
            loss_sum += micro_sum.item()
            tokens += int(batch["attention_mask"].sum())
        loss_sum, extra_sum, tokens = D.sum_across([loss_sum, extra_sum, tokens], self.dist)
        mean_loss = loss_sum / units
        if not math.isfinite(mean_loss + extra_sum):
            self._non_finite(step, "loss", mean_loss + extra_sum / world)
        return mean_loss, int(tokens), self._apply_update(step)

    def _apply_update(self, step: int) -> float | None:
        """The gradients are in: hooks, clipping (refusing a non-finite norm), the optimizer and schedule steps.
        Returns the gradient norm before clipping (None when training.max_grad_norm is off)."""
        for hook in self.hooks:
            hook.on_backward_end(self.raw, step)
        grad_norm = None
        max_norm = self.cfg.training.max_grad_norm
        if max_norm is not None:
            params = [p for p in self.raw.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if not math.isfinite(grad_norm):
                self._non_finite(step, "gradient norm", grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for hook in self.hooks:
            hook.on_step_end(self.raw, step)
        return grad_norm

    def _non_finite(self, step: int, what: str, value: float) -> None:
        last = S.latest_checkpoint(self.out / S.CHECKPOINTS)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written (see training.save_every)"
        raise NonFiniteLossError(
            f"training stopped at step {step + 1}: the {what} is {value} (not finite); the weights were not updated "
            f"with it and nothing was saved after it; {kept}. Lower training.lr, keep training.max_grad_norm set, "
            "or check the data; then rerun (with --resume to continue from the checkpoint)"
        )

    # -- evaluation, best adapter, checkpoints ------------------------------------------------------------------
    def evaluate(self, examples: list | None = None) -> dict[str, float] | None:
        """Metrics on `examples` (the validation set by default)."""
        examples = self.val_set if examples is None else examples
        if not examples:
            return None
        size = self.cfg.training.eval_batch_size or 2 * self.cfg.training.batch_size
        batches = (self._batch(examples[i:i + size]) for i in range(0, len(examples), size))
        model = self.model if self.dist.mode == "fsdp" else self.raw  # FSDP must run its forward on every rank
        return evaluate(model, self.task, batches, self._autocast)

    def _after_eval(self, metrics: dict[str, float]) -> None:
        p, t = self.progress, self.cfg.training
        p.last_eval_step, self.last_eval = p.step, metrics
        self.metrics.log(p.step, "eval", metrics)
        name = self.metric_name
        value = metrics[name]
        better = p.best_metric is None or (value < p.best_metric if name == "loss" else value > p.best_metric)
        self._say(console.eval_line(p.step, self.total_steps, metrics, better))
        if better:
            p.best_metric, p.best_step, p.bad_evals = value, p.step, 0
            if self.cfg.output.save_best:
                self._save_adapter(self.out / "best")
        else:
            p.bad_evals += 1
            if t.early_stopping_patience and p.bad_evals >= t.early_stopping_patience:
                p.stopped_early = True
                self._say(f"early stopping at step {p.step}: no better eval {name} for {p.bad_evals} evaluations")
        for hook in self.hooks:
            reason = hook.on_eval(p.step, metrics, p.step >= self.total_steps)
            if reason and not p.stopped_early:
                p.stopped_early = True
                self._say(f"stopping at step {p.step}: {reason}")

    @property
    def metric_name(self) -> str:
        metric = self.cfg.training.metric
        return ("accuracy" if self.task.classification else "loss") if metric == "auto" else metric

    def _save_adapter(self, directory: Path, atomic: bool = True) -> None:
        with D.gathered_state(self.raw, self.dist):  # FSDP: every rank helps gather, rank 0 writes
            if not self.dist.is_main:
                return
            if not atomic:  # the output dir itself: the save replaces its files atomically
                self._save_into(directory)
                self.folder.commit()
                return
            with S.atomic_directory(directory) as tmp:
                self._save_into(tmp)
            self.folder.commit()  # the new run has an adapter of its own: a run it replaces can go

    def _save_into(self, directory: Path) -> None:
        method = self.cfg.training.method
        if method == "lora":
            save_trained_adapter(self.raw, directory, self.cfg.output.adapter_name, self.hooks)
        else:
            save_weights(self.raw, directory, method)

    def _checkpoint(self) -> None:
        rng = D.gather_objects(S.capture_rng(), self.dist)
        if self.dist.is_main:
            S.save_checkpoint(self.out / S.CHECKPOINTS, self.raw, self.optimizer, self.scheduler, self.progress,
                              self.hooks, rng, self.cfg.to_yaml(), self.cfg.output.adapter_name,
                              self.cfg.training.keep_checkpoints, with_adapter=self.cfg.training.method == "lora")
            self.folder.commit()
        D.barrier(self.dist)

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        if self.finished:  # a resumed run that was done already: nothing changes
            return TrainResult(self.out, self.summary, self.summary.get("final_eval"), self.dist.is_main)
        try:
            return self._train()
        except BaseException as exc:
            kept = self._after_failure()
            if isinstance(exc, OSError):
                raise OutputDirError(describe_os_error(exc, self.out, kept)) from None
            raise
        finally:
            self._restore_globals()

    def _after_failure(self) -> str:
        """A run that fails before it saved anything gives the folder back to the run it replaced (if any)."""
        if not self.dist.is_main:
            return ""
        self.metrics.close()
        if self.folder.stashed and not self.folder.committed:
            self.folder.rollback()
            return f"; the previous run in {self.out} was kept"
        last = S.latest_checkpoint(self.out / S.CHECKPOINTS)
        return f"; then rerun with --resume to continue from {last.name}" if last else ""

    def _start_info(self) -> console.StartInfo:
        """The numbers of the start-up summary (the data, the steps, the parameters, what differs from defaults)."""
        trainable, total = count_parameters(self.raw)
        lengths = [len(e["input_ids"]) for e in self.train_set if "input_ids" in e]
        tokens = sum(lengths) / len(lengths) * self.global_batch if lengths else None
        return console.StartInfo(
            run_name=self.cfg.output.name_of_run(), stats=self.data_stats, test_examples=len(self.test_set),
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, global_batch=self.global_batch,
            trainable=trainable, total=total, tokens_per_step=tokens,
            changed=console.non_default_settings(self.cfg.to_dict(), TrainConfig().to_dict()),
            trackers=[tracker.where for tracker in self.metrics.trackers], first_step=self.progress.step,
            model=self._model_line(), data=self._data_line())

    def _model_line(self) -> str:
        m = self.cfg.model
        dtype = str(next(self.raw.parameters()).dtype).removeprefix("torch.")
        revision = f" @ {m.revision}" if m.revision else ""
        return f"{m.path}{revision} ({m.task}, {dtype}, method {self.cfg.training.method})"

    def _data_line(self) -> str:
        d, stats = self.cfg.data, self.data_stats
        cache = {"hit": "read back from the tokenized-data cache", "stored": "tokenized, kept in the cache",
                 "off": "tokenized"}.get(str(stats.get("cache")), "tokenized")
        return f"{d.path or d.train_file} ({stats['format']}; {cache})"

    def _title(self) -> str:
        method = self.cfg.training.method
        return report.run_title(self.cfg.output.name_of_run(), self.cfg.model.path, method,
                                self.cfg.lora.r if method == "lora" else None)

    def _finish_summary(self, summary: dict[str, Any]) -> None:
        """What the main process adds to summary.json once the adapter is saved: the variants' entries and
        spectrum.png (a subclass with another adapter layout says its own, e.g. train/diffusion/trainer.py)."""
        summary.update(variant_summary(self.raw, self.cfg.output.adapter_name, self.hooks, self.out,
                                       self.cfg.output.plot))
        if self.cfg.output.plot and self.cfg.training.method == "lora":
            summary["spectrum"] = str(report.write_spectrum(self.out, self.cfg.output.adapter_name,
                                                            self._title()) or "") or None

    def _train(self) -> TrainResult:
        t, p = self.cfg.training, self.progress
        started, first_step = time.perf_counter(), p.step
        if self.dist.is_main:
            self._say(console.startup_summary(self._start_info()))
        # a terminal gets tqdm's bar; logs, pipes and CI get plain lines (console.py says how often)
        show, terminal = self.dist.is_main and t.progress, sys.stderr.isatty()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (show and terminal))
        lines = (console.ProgressLines(self.total_steps, console.line_interval(t.log_every, self.total_steps), p.step)
                 if show and not terminal else None)
        failed = True
        try:
            while p.step < self.total_steps and not p.stopped_early:
                tick = time.perf_counter()
                loss, tokens, grad_norm = self._step(p.step)
                p.step += 1
                p.tokens += tokens
                seconds = time.perf_counter() - tick
                lr = self.scheduler.get_last_lr()[0]
                if p.step % t.log_every == 0 or p.step == self.total_steps:
                    self.metrics.log(p.step, "train", {"loss": loss, "lr": lr, "grad_norm": grad_norm,
                                                       "tokens_per_s": tokens / max(seconds, 1e-9),
                                                       "epoch": (p.step - 1) // self.steps_per_epoch})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}")
                bar.update(1)
                line = lines.update(p.step, loss, lr) if lines is not None else None
                if line:
                    self._say(line)
                eval_due = p.step % t.eval_every == 0 if t.eval_every else p.step % self.steps_per_epoch == 0
                if eval_due and self.val_set:
                    self._after_eval(self.evaluate())
                if t.save_every and (p.step % t.save_every == 0 or p.stopped_early):
                    p.elapsed_s += time.perf_counter() - started
                    started = time.perf_counter()
                    self._checkpoint()
            bar.close()  # the lines below print under a finished bar
            if self.val_set and (p.last_eval_step != p.step or self.last_eval is None):
                self._after_eval(self.evaluate())
            final_eval = self.last_eval
            p.elapsed_s += time.perf_counter() - started
            self._save_adapter(self.out, atomic=False)
            summary = report.build_summary(self, final_eval, p.step - first_step)
            if self.test_set:  # once, with the final weights; nothing is chosen by it
                summary["test_eval"] = self.evaluate(self.test_set)
                self.metrics.log(p.step, "test", summary["test_eval"])
                self._say(console.eval_line(p.step, self.total_steps, summary["test_eval"], False, label="test"))
            if self.dist.is_main:
                self._finish_summary(summary)
                report.write_summary(self.out, summary, read_metrics(self.out / "metrics.jsonl"), self.cfg.output.plot,
                                     self._title())
            failed = False
            return TrainResult(self.out, summary, final_eval, self.dist.is_main)
        finally:
            bar.close()
            self.metrics.close(failed=failed)
