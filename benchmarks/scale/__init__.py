"""benchmarks/SCALE.md: lorakit at real scale (7B-class memory, SFT race against TRL + PEFT, many adapters served,
how cost grows). `python -m benchmarks.scale [--quick]` runs every part and writes the report (scale/run.py)."""
