"""A draft model for benchmarks: the first layers of a GGUF, written as a model of its own.

No model smaller than Gemma 3 270M with its vocabulary can be downloaded here, so the
speculative-decoding benchmark drafts with Gemma 3 270M cut to its first ``keep``
layers (a layer-skipping draft: same embeddings, same output head, same vocabulary).
It guesses worse than a trained small model would, so the numbers it gives are a
floor for what a real draft model of the family would do.

    python benchmarks/draft_gguf.py SRC.gguf DST.gguf --keep 6
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import gguf


def truncate_layers(source: Path, target: Path, keep: int) -> Path:
    """Write ``source`` with only its blocks ``0..keep-1`` to ``target``."""
    reader = gguf.GGUFReader(source)
    arch_field = reader.fields[gguf.Keys.General.ARCHITECTURE]
    arch = str(arch_field.contents())
    writer = gguf.GGUFWriter(target, arch)
    block_count = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == block_count:
            if keep >= int(value):
                raise SystemExit(f"{source.name} has only {value} layers")
            value = keep
        elif (
            isinstance(value, list)
            and field.name.startswith(f"{arch}.")
            and len(value) == reader.fields[block_count].contents()
        ):
            # Per-layer arrays (sliding-window patterns, head counts): the kept layers'.
            value = value[:keep]
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    layer = re.compile(r"^blk\.(\d+)\.")
    kept = [t for t in reader.tensors if not (m := layer.match(t.name)) or int(m.group(1)) < keep]
    for tensor in kept:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--keep", type=int, default=6)
    args = parser.parse_args()
    truncate_layers(args.source, args.target, args.keep)
