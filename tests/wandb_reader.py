"""A small reader of W&B's offline `.wandb` files (wandb 0.31 has no public reader).

The file is a LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version), then 32 KiB
blocks of chunks, each with a 7-byte header (crc32c: 4 bytes, length: 2 bytes little-endian,
type: 1 = full, 2 = first, 3 = middle, 4 = last) and its payload; chunks of a record are joined,
and the record is a protobuf `wandb_internal_pb2.Record`. Read it after the run has finished:
writes are buffered until then.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a .wandb file (header {data[:7]!r})")
    pos, records, buf = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left - HEADER
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind in (FULL, FIRST):
            buf = chunk
        else:
            buf += chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            records.append(rec)
            buf = b""
    return records


def find_runs(run_dir: str | Path) -> list:
    """All .wandb files under a run dir, complete: `run.finish()` returns before wandb's
    service has written everything out (a busy machine shows it), so runs finished in this
    process are flushed first by shutting the service down (`wandb.teardown`; the next
    `wandb.init` starts a new one). A run of a process that has exited is complete."""
    import wandb

    wandb.teardown()
    return sorted(Path(run_dir).rglob("*.wandb"))


def summarize(path: str | Path) -> dict:
    """{'run': Record.run, 'config': {...}, 'history': [{...}], 'summary': {...},
    'metrics': {name: MetricRecord} (define_metric), 'artifacts': [ArtifactRecord],
    'exit': the exit code or None}."""
    out: dict = {"run": None, "config": {}, "history": [], "summary": {}, "metrics": {},
                 "artifacts": [], "exit": None}
    for rec in read_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(
                    item.value_json)
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "metric":
            out["metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric
        elif kind == "artifact":
            out["artifacts"].append(rec.artifact)
        elif kind == "exit":
            out["exit"] = rec.exit.exit_code
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    return out
