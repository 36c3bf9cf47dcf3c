"""The demo (`lorakit demo`, and `lorakit` with no command): all-MiniLM-L6-v2 on Rotten Tomatoes, trained as a
linear probe, with LoRA and fully fine-tuned, through the same trainer, then compared side by side.

settings.py  what the demo runs: its config (src/lorakit/data/demo.yaml, the one definition; configs/demo.yaml is
             a copy), the per-method overrides listed in it, and its dataset (lorakit.corpora)
worker.py    one method trained in a process of its own (its own peak memory)
run.py       the three runs, the progress lines, the comparison
results.py   one method's numbers; table.py the side-by-side table; hints.py why a method lost to the probe
"""
