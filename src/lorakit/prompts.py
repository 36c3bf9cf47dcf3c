"""Prompt templates lorakit trains with and generates with: the Alpaca prompt and the plain chat layout (used when
a tokenizer has no chat_template). Here, below train/ and the CLI, because both sides must agree on them."""

from __future__ import annotations

# The Alpaca prompt (Taori et al. 2023). The model learns to continue it with the output, then EOS.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
# Chat without a tokenizer chat_template: each turn is "<|role|>\n" + content + "\n"; an assistant turn's
# content and "\n" (then EOS) are trained, its "<|assistant|>\n" header is not. At inference, end the prompt
# with "<|assistant|>\n". Example: "<|user|>\nHi\n<|assistant|>\nHello!\n</s>"
CHAT_HEADER = "<|{role}|>\n"
CHAT_ROLES = ("system", "user", "assistant", "tool")
