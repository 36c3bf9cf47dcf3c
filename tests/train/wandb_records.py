"""Read an offline W&B run's .wandb file with wandb's own protobuf messages (the test-side reader).

The file is a LevelDB-style log: a 7-byte header (":W&B", 0xBEE1, version), then 32 KiB blocks of chunks, each
with a 7-byte header (crc32c, little-endian length, type: 1 full, 2 first, 3 middle, 4 last); a record's bytes are
its chunks joined, and decode as wandb.proto.wandb_internal_pb2.Record.
"""

from __future__ import annotations

import json
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list:
    import wandb
    from wandb.proto import wandb_internal_pb2

    wandb.teardown()  # the W&B service writes the file; stopping it flushes what it still holds (slow machines)
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == 0:  # zero padding
            continue
        pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records: list) -> list[dict]:
    """The logged rows, {"_step": 3, "train/loss": 0.71, ...}, values decoded from JSON."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def first(records: list, kind: str):
    return next(getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind)
