"""The text-to-image training loop: lorakit.train.trainer.Trainer with a diffusion model in place of a language
model. Everything around the steps is the parent's: the output folder's life, checkpoints and exact resume,
metrics.jsonl and trackers, progress lines, evaluations and best/, the NaN check, summary.json and curves.png.
What differs is here: the pipeline and its adapters, the image data, the denoising step and its evaluation, and the
adapter file (diffusers' layout).

Exact resume: the images of step N are S.step_indices(N, ...), and every random draw of the step (flips, the VAE
latent sample, the noise, the timesteps) comes from a generator seeded by (seed, N), so a resumed run repeats the
steps of an uninterrupted one bit for bit (LoRA dropout uses the global RNG, which checkpoints restore).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from lorakit.adapters import add_adapter, count_parameters
from lorakit.diffusion.files import save_pipeline_adapter
from lorakit.errors import ConfigError
from lorakit.hf.pipelines import denoiser_name, load_pipeline
from lorakit.io.formats.diffusers_lora import WEIGHTS_NAME
from lorakit.train import console
from lorakit.train import state as S
from lorakit.train.config import TrainConfig
from lorakit.train.diffusion import latents as L
from lorakit.train.diffusion.config import DENOISER_TARGETS, DiffusionConfig, resolve_text_to_image
from lorakit.train.diffusion.data import class_examples, split_examples
from lorakit.train.diffusion.loss import draw_noise, draw_timesteps, min_snr_weights, per_example_loss, target_for
from lorakit.train.diffusion.prior import generate_class_images, missing_class_images
from lorakit.train.diffusion.samples import write_samples
from lorakit.train.hooks import TrainHook
from lorakit.train.metrics import check_sinks
from lorakit.train.optim import build_scheduler, param_groups
from lorakit.train.run_folder import RunFolder
from lorakit.train.trainer import Trainer

EVAL_STREAM = -1  # the "step" whose generator draws the evaluation's fixed noise and timesteps


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step `step`'s random draws (a stream apart from the data order's, S.epoch_order)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) ^ 0x6E6F6973_6500)


class DiffusionTrainer(Trainer):
    """One text-to-image LoRA run (cfg.model.task == "text-to-image")."""

    # -- set-up (reads only, except class images generated for prior preservation) ------------------------------
    def _check_and_build(self, cfg: TrainConfig, resume: bool | str | None, world_size: int) -> None:
        if world_size > 1:
            raise ConfigError("model.task=text-to-image trains in one process for now; drop --nproc (or torchrun)")
        self.cfg = resolve_text_to_image(cfg)
        t, d = self.cfg.training, self.cfg.diffusion
        self.task, self.tokenizer, self.test_set = None, None, []
        self.out = Path(self.cfg.output.dir)
        self.folder = RunFolder(self.out, self.cfg.output.adapter_name)
        self.folder.check(bool(resume), self.cfg.output.overwrite, repair=self.dist.is_main)
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
        torch.manual_seed(t.seed)
        train_examples, val_examples, self.data_stats = split_examples(self.cfg)  # before the pipeline: fast errors
        self.pipe = load_pipeline(self.cfg.model.path, self.cfg.model.revision, self.cfg.model.dtype,
                                  str(self.dist.device))
        if denoiser_name(self.pipe) != "unet":
            raise ConfigError(f"{type(self.pipe).__name__}: lorakit trains UNet pipelines (SD 1.x / 2.x, SDXL) for "
                              "now; this one has a transformer denoiser")
        self.prediction_type = (self.pipe.scheduler.config.prediction_type if d.prediction_type == "auto"
                                else d.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the scheduler predicts {self.prediction_type!r}; set diffusion.prediction_type to "
                              "epsilon or v_prediction")
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)  # the training noise
        self._prepare_class_images()
        self.train_set = L.plan_items(train_examples, d.resolution, d.center_crop, t.seed)
        self.val_set = L.plan_items(val_examples, d.resolution, True, t.seed)
        self.class_set = L.plan_items(class_examples(self.cfg), d.resolution, d.center_crop, t.seed)
        self.data_stats["class_examples"] = len(self.class_set)
        self.raw = self._with_adapters()
        if d.cache_latents:
            for items, flips in ((self.train_set, d.random_flip), (self.val_set, False),
                                 (self.class_set, d.random_flip)):
                L.cache_items(self.pipe, items, d.resolution, flips, not d.train_text_encoder, self.dist.device)
        self.data_stats["cache"] = "latents cached" if d.cache_latents else "encoded each step"
        self.model = self.raw
        self.global_batch = t.batch_size * t.grad_accum
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.train_set)} images, fewer than one batch of "
                              f"{self.global_batch} (training.batch_size x grad_accum); lower training.batch_size")
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        if d.validation_prompt:
            self.hooks.append(SampleHook(self))
        self.optimizer = self._optimizer()
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)
        self.progress = S.Progress()
        self.last_eval = None
        check_sinks(self.cfg.output)
        self.finished = False
        self._rng = None
        self._resume(resume)

    def _prepare_class_images(self) -> None:
        d = self.cfg.diffusion
        if d.class_data_dir is None:
            return
        folder = Path(d.class_data_dir)
        if self._quiet:  # the launcher's check writes nothing
            return
        if missing_class_images(folder, d.num_class_images):  # the base pipeline: no adapter yet
            generate_class_images(self.pipe, folder, d.class_prompt, d.num_class_images, d.resolution,
                                  d.class_inference_steps, self.cfg.training.seed, self._say)

    def _with_adapters(self) -> nn.Module:
        """LoRA into the denoiser (and the text encoders when trained); everything else frozen. Returns the
        trained components as one ModuleDict (its keys are the pipeline's attribute names)."""
        d, name = self.cfg.diffusion, self.cfg.output.adapter_name
        lora = dataclasses.replace(self.cfg.lora)
        if lora.target_modules is None:
            lora.target_modules = list(DENOISER_TARGETS)
        lora.base_model_name_or_path = lora.base_model_name_or_path or self.cfg.model.path
        self.cfg.lora = lora
        for module in self.pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        trained = {"unet": self.pipe.unet}
        if d.train_text_encoder:
            trained.update({attr: encoder for (_, encoder), attr in
                            zip(L.text_pairs(self.pipe), ("text_encoder", "text_encoder_2"), strict=False)})
        text_lora = dataclasses.replace(lora, target_modules=list(d.text_encoder_targets))
        for attr, module in trained.items():
            config = lora if attr == "unet" else text_lora
            try:
                add_adapter(module, copy.deepcopy(config), name)
            except ConfigError as exc:
                raise ConfigError(f"{attr}: {exc}") from None
        self.pipe.vae.eval()
        raw = nn.ModuleDict(trained)
        raw.train()
        return raw

    def _optimizer(self) -> torch.optim.AdamW:
        """AdamW over the adapters: the text encoders' at diffusion.text_encoder_lr (LoRA+ ratios kept)."""
        t, d = self.cfg.training, self.cfg.diffusion
        text_factor = (d.text_encoder_lr or t.lr) / t.lr
        groups = []
        for group in param_groups(self.raw, t):
            pairs = list(zip(group.pop("param_names"), group.pop("params"), strict=True))
            text = [p for n, p in pairs if n.startswith("text_encoder")]
            rest = [p for n, p in pairs if not n.startswith("text_encoder")]
            if rest:
                groups.append({**group, "params": rest})
            if text:
                groups.append({**group, "name": f"text_encoder_{group['name']}", "params": text,
                               "lr": group["lr"] * text_factor})
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps)

    # -- the denoising loss ---------------------------------------------------------------------------------------
    def _losses(self, items: list[L.Item], generator: torch.Generator, sample: bool = True) -> torch.Tensor:
        """Per-example denoising losses of `items`; every random draw from `generator` (sample=False: the latent
        means, no flips: the evaluation)."""
        d, device = self.cfg.diffusion, self.dist.device
        flips = [bool(torch.rand((), generator=generator) < 0.5) if d.random_flip and sample else False
                 for _ in items]
        latents = L.latents_for(self.pipe, items, flips, d.resolution, generator if sample else None, device)
        noise = draw_noise(latents, generator, d.noise_offset)
        timesteps = draw_timesteps(len(items), self.noise_scheduler.config.num_train_timesteps, generator).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        unet = self.pipe.unet  # a bf16 / fp16 base takes its inputs in its dtype; the loss is taken in float32
        kwargs = L.conditioning(self.pipe, items, d.resolution, device, unet.dtype)
        prediction = unet(noisy.to(unet.dtype), timesteps, **kwargs).sample
        target = target_for(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        weights = None
        if d.snr_gamma is not None:
            weights = min_snr_weights(self.noise_scheduler.alphas_cumprod, timesteps, d.snr_gamma,
                                      self.prediction_type)
        return per_example_loss(prediction, target, weights)

    def _micro_items(self, micro: int, indices: list[int]) -> tuple[list[L.Item], torch.Tensor]:
        """The images of micro-batch number `micro` (counted over the run) and their loss weights; with prior
        preservation, one class image per instance image, walking through the class set (weight
        prior_loss_weight)."""
        items = [self.train_set[i] for i in indices]
        weights = [1.0] * len(items)
        if self.class_set:
            first = micro * self.cfg.training.batch_size
            items += [self.class_set[(first + k) % len(self.class_set)] for k in range(len(indices))]
            weights += [self.cfg.diffusion.prior_loss_weight] * len(indices)
        return items, torch.tensor(weights)

    def _step(self, step: int) -> tuple[float, int, float | None]:
        t = self.cfg.training
        indices = S.step_indices(step, len(self.train_set), self.global_batch, t.seed)
        generator = step_generator(t.seed, step)
        loss_sum, images = 0.0, 0
        for m in range(t.grad_accum):
            chunk = indices[m * t.batch_size:(m + 1) * t.batch_size]
            items, weights = self._micro_items(step * t.grad_accum + m, chunk)
            with self._autocast():
                micro = (self._losses(items, generator) * weights.to(self.dist.device)).sum()
            (micro / self.global_batch).backward()  # the mean over the global batch, however it is split
            loss_sum += micro.item()
            images += len(items)
        mean_loss = loss_sum / self.global_batch
        if not torch.isfinite(torch.tensor(mean_loss)):
            self._non_finite(step, "loss", mean_loss)
        return mean_loss, images, self._apply_update(step)

    def evaluate(self, examples: list | None = None) -> dict[str, float] | None:
        """The denoising loss on `examples` (the validation images) at fixed noise and timesteps: the same draws
        at every evaluation, so evaluations differ only by the weights."""
        examples = self.val_set if examples is None else examples
        if not examples:
            return None
        size = self.cfg.training.eval_batch_size or 2 * self.cfg.training.batch_size
        generator = step_generator(self.cfg.training.seed, EVAL_STREAM)
        self.raw.eval()
        total = 0.0
        try:
            with torch.no_grad(), self._autocast():
                for start in range(0, len(examples), size):
                    total += float(self._losses(examples[start:start + size], generator, sample=False).sum())
        finally:
            self.raw.train()
        return {"loss": total / len(examples)}

    @property
    def metric_name(self) -> str:
        return "loss"

    # -- saving ---------------------------------------------------------------------------------------------------
    def _save_into(self, directory: Path) -> None:
        """The adapter in diffusers' layout (pytorch_lora_weights.safetensors): pipe.load_lora_weights reads it."""
        save_pipeline_adapter(self.pipe, directory, self.cfg.output.adapter_name, format="diffusers")

    def _checkpoint(self) -> None:
        S.save_checkpoint(self.out / S.CHECKPOINTS, self.raw, self.optimizer, self.scheduler, self.progress,
                          self.hooks, [S.capture_rng()], self.cfg.to_yaml(), self.cfg.output.adapter_name,
                          self.cfg.training.keep_checkpoints, with_adapter=False)
        self.folder.commit()

    def _finish_summary(self, summary: dict) -> None:
        d = self.cfg.diffusion
        summary["adapter_bytes"] = (self.out / WEIGHTS_NAME).stat().st_size
        summary["prediction_type"] = self.prediction_type
        if d.validation_prompt:
            summary["samples"] = [str(p) for p in self._sample(self.progress.step)]

    def _sample(self, step: int) -> list[Path]:
        d = self.cfg.diffusion
        return write_samples(self.pipe, dict(self.raw.items()), self.out, step, d.validation_prompt,
                             d.num_validation_images, d.resolution, d.validation_inference_steps,
                             self.cfg.training.seed)

    # -- what the run prints --------------------------------------------------------------------------------------
    def _start_info(self) -> console.StartInfo:
        trainable, total = count_parameters(self.raw)
        return console.StartInfo(
            run_name=self.cfg.output.name_of_run(), stats=self.data_stats, test_examples=0,
            total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch, global_batch=self.global_batch,
            trainable=trainable, total=total, tokens_per_step=None,
            changed=console.non_default_settings(self.cfg.to_dict(), _defaults(self.cfg)),
            trackers=[tracker.where for tracker in self.metrics.trackers], first_step=self.progress.step,
            model=self._model_line(), data=self._data_line())

    def _model_line(self) -> str:
        m, d = self.cfg.model, self.cfg.diffusion
        dtype = str(self.pipe.unet.dtype).removeprefix("torch.")
        trained = "unet + text encoder" if d.train_text_encoder else "unet"
        return f"{m.path} ({type(self.pipe).__name__}, {dtype}, {self.prediction_type}; LoRA in {trained})"

    def _data_line(self) -> str:
        s = self.data_stats
        line = f"{self.cfg.data.path} ({s['format']}; {s['cache']}"
        return line + (f"; {s['class_examples']} class images)" if s["class_examples"] else ")")


class SampleHook(TrainHook):
    """Writes sample images every diffusion.validation_every steps (the end of the run samples too)."""

    def __init__(self, trainer: DiffusionTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, model: nn.Module, step: int) -> None:
        every = self.trainer.cfg.diffusion.validation_every
        done = step + 1
        if every and done % every == 0 and done < self.trainer.total_steps:
            self.trainer._sample(done)


def _defaults(cfg: TrainConfig) -> dict:
    """The default config of a text-to-image run (what the start-up summary compares against)."""
    defaults = TrainConfig().to_dict()
    defaults["diffusion"] = dataclasses.asdict(DiffusionConfig())
    return defaults
