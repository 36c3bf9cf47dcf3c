"""The embedded demo (`lorakit demo`, and `lorakit` with no command): LoRA on the real all-MiniLM-L6-v2 against a
linear probe of the untouched model.

settings.py  what the demo runs: its config (src/lorakit/data/demo.yaml, the one definition; configs/demo.yaml is
             a copy) and its dataset (src/lorakit/data/demo_*.jsonl)
run.py       the probe, the LoRA run and the comparison
"""
