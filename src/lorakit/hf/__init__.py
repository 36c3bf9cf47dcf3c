"""Loading Hugging Face models and tokenizers from Hub ids (the HF cache), local directories or GGUF files: every
command that needs a base model (train, eval, merge, combine, generate, serve, demo) loads it through here, so none
of them imports train/ to get one.

config.py      ModelConfig: the `model:` section of a training config (what to load, how)
paths.py       model paths: the default model, checks, the task a checkpoint's architecture implies
hub.py         Hub ids: models, adapters and datasets found in (or downloaded into) the standard HF cache
gguf.py        a .gguf file (or a folder holding one) as the model: its architecture, the dequantized load
tokenizer.py   the tokenizer of a model directory, with a pad token
models.py      the base model for a task (Auto classes, dtype, quantization, activation checkpointing)
classifier.py  MeanPoolClassifier (mean-pooled encoder + a new head) and the names of new heads
checkpointing.py  activation checkpointing, whatever the transformers version calls it
quantized.py   model.quantization -> lorakit.quantize
adapter_model.py  how to rebuild the model an adapter was trained on
quiet.py       silence transformers' progress bars and load reports
tiny.py        tiny random models with a word-level tokenizer, for tests and examples (python -m lorakit.hf.tiny)
"""
