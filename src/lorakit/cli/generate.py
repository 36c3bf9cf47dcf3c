"""Generate text with a causal LM from a local directory, with or without a LoRA adapter.

Greedy by default (--temperature 0); with a temperature, samples (seeded by --seed). --chat wraps the prompt
in the tokenizer's chat template as a user message, --alpaca in the Alpaca template. Prints the generated
continuation of each prompt.

examples:
  lorakit generate ./tiny-llama --prompt "the cat is"
  lorakit generate ./tiny-llama --adapter runs/alpaca-tiny --alpaca --prompt "What color is a cat?"
  lorakit generate /path/to/base --adapter runs/chat --chat --temperature 0.7 --prompt "hi" --prompt "bye"
  lorakit generate /path/to/base --adapter runs/a --compare --prompt "2 + 2 ="     # base and adapter side by side

For a diffusers pipeline folder (model_index.json), it writes PNG images instead (lorakit/cli/generate_image.py):
  lorakit generate ./tiny-sd --prompt "a red circle" --adapter runs/shapes:0.8 --steps 20 --out circle.png
  lorakit generate ./sd15 --adapter style.safetensors --adapter dog.safetensors:0.6 --compare --prompt "a dog"
"""

from __future__ import annotations

import argparse

from lorakit.cli.generate_image import add_image_arguments
from lorakit.errors import AdapterFileError, ConfigError


class NonFiniteLogitsError(ConfigError):
    """The model produced NaN/Inf logits: decoding them would print garbage (or nothing) as if it were an answer."""


def check_finite_adapter(model) -> None:
    """A NaN/Inf in the adapter makes every logit NaN, which greedy decoding turns into an empty answer."""
    for name, param in model.named_parameters():
        if "lora_" in name and param.is_floating_point() and not param.isfinite().all():
            raise AdapterFileError(f"the adapter's tensor {name} holds NaN/Inf, so the model's outputs would too; "
                                   "use another checkpoint of the adapter (a diverged run writes these)")


class FiniteLogits:
    """A logits processor that refuses NaN/Inf scores (-inf alone is a legitimate mask, so it passes)."""

    def __call__(self, input_ids, scores):
        if scores.isnan().any() or scores.isposinf().any():
            raise NonFiniteLogitsError(
                f"the model produced non-finite logits (NaN/Inf) after {input_ids.shape[1]} tokens; its "
                "weights (or the adapter's) hold NaN/Inf or overflow in this dtype")
        return scores


class EveryAdapter(argparse.Action):
    """--adapter: `adapter` is the one a causal LM takes, `adapters` every one given (a pipeline takes several)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.adapter = values
        namespace.adapters = [*(getattr(namespace, "adapters", None) or []), values]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="causal LM: a local directory (config.json, weights, tokenizer), a GGUF file, "
                        "or a Hub id (org/name) from the HF cache; or a diffusers pipeline folder (images)")
    parser.add_argument("--revision", help="the base's Hub revision (branch, tag or commit)")
    parser.add_argument("--adapter", action=EveryAdapter,
                        help="adapter directory, or a Hub id org/name[@revision], to apply (default: the base model "
                        "alone); for a pipeline SRC[:WEIGHT], repeat for several")
    parser.set_defaults(adapters=None)
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    parser.add_argument("--alpaca", action="store_true",
                        help="wrap the prompt in the Alpaca template that data.format=alpaca trains on")
    parser.add_argument("--compare", action="store_true",
                        help="also print the base model's output (a pipeline: its image beside the adapted one)")
    add_image_arguments(parser)  # BASE a diffusers pipeline: prompt -> PNG (lorakit/cli/generate_image.py)


def generate(model, tokenizer, prompt: str, args: argparse.Namespace) -> str:
    import torch

    if args.alpaca:
        from lorakit.prompts import ALPACA_PROMPT_NO_INPUT

        prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=prompt)
    elif args.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"--chat: the tokenizer of {args.base} has no chat template; drop --chat")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    encoded = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(args.seed)
    sample = args.temperature > 0
    options = dict(do_sample=sample, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    if sample:
        options.update(temperature=args.temperature, top_p=args.top_p)
    from transformers import LogitsProcessorList

    with torch.no_grad():
        output = model.generate(**encoded, **options, logits_processor=LogitsProcessorList([FiniteLogits()]))
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def run(args: argparse.Namespace) -> int:
    from lorakit.cli import generate_image

    if generate_image.wants_pipeline(args):
        return generate_image.run(args)
    generate_image.refuse_image_options(args)
    if len(args.adapters or []) > 1:
        raise ConfigError("a causal LM takes one --adapter (several at once: lorakit combine them first)")
    return run_text(args)


def run_text(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    import lorakit
    from lorakit.hf.models import from_pretrained
    from lorakit.hf.paths import architecture_of, resolve_model_path, task_of_checkpoint
    from lorakit.hf.quiet import quiet_transformers
    from lorakit.hf.tokenizer import load_tokenizer

    if args.max_new_tokens <= 0 or args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("expected --max-new-tokens > 0, --temperature >= 0 and --top-p in (0, 1]")
    if args.compare and not args.adapter:
        raise ConfigError("--compare needs --adapter (it prints the base and the adapted outputs)")
    quiet_transformers()
    path = resolve_model_path(args.base, args.revision)
    tokenizer = load_tokenizer(path)
    architecture = architecture_of(path)  # a GGUF's is a family name ("llama"); its task says if it is a causal LM
    if architecture and task_of_checkpoint(path) != "causal-lm" and not architecture.endswith("LMHeadModel"):
        raise ConfigError(f"{path} holds a {architecture}, not a causal language model; lorakit generate needs one "
                          "(an ...ForCausalLM checkpoint)")
    try:
        model = from_pretrained(AutoModelForCausalLM, path).eval()
    except ValueError as exc:
        raise ConfigError(f"{path} is not a causal language model ({exc}); lorakit generate needs one") from None
    if args.adapter:
        lorakit.load_adapter(model, args.adapter)
        check_finite_adapter(model)
    for prompt in args.prompt:
        text = generate(model, tokenizer, prompt, args)
        if args.compare:
            with lorakit.disable_adapters(model):
                base_text = generate(model, tokenizer, prompt, args)
            print(f"prompt: {prompt}\nbase:    {base_text}\nadapter: {text}\n")
        else:
            print(text if len(args.prompt) == 1 else f"prompt: {prompt}\n{text}\n")
    return 0
