"""Write a copy of a Llama-family GGUF that keeps only its first N transformer blocks (and the
embedding, final norm and head), for `cascade-xla bench --suite compare`: it is the draft model
node-llama-cpp's DraftSequenceTokenPredictor gets, the same "first N layers of the target" draft
that cascade-xla's self-speculative mode and the Hugging Face assisted-generation row use.
Tensors are copied byte for byte (still Q4_1); only `<arch>.block_count` changes. With `--q8_0`
every quantised tensor is requantised to Q8_0 (llama.cpp's int8 format: the counterpart of
cascade-xla's INT8 draft, whose default is all the target's layers at int8).

  python scripts/bench-truncate-gguf.py IN.gguf OUT.gguf N [--q8_0]

Needs the `gguf` package (the oracle venv has it: `node scripts/oracle-env.mjs`).
"""

import os
import re
import sys

import gguf


def main() -> None:
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    q8 = "--q8_0" in sys.argv[4:]
    reader = gguf.GGUFReader(src)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    block_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    old = reader.fields[block_key].contents()
    if not 1 <= n <= old:
        raise SystemExit(f"N must be in 1..{old}")
    tmp = f"{dst}.tmp{os.getpid()}"
    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = n if field.name == block_key else field.contents()
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)
    keep = []
    for t in reader.tensors:
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) >= n:
            continue
        keep.append(t)
    data = {}
    for t in keep:
        d, kind = t.data, t.tensor_type
        float_kinds = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
        if q8 and kind not in float_kinds:
            d = gguf.quants.quantize(gguf.quants.dequantize(d, kind), gguf.GGMLQuantizationType.Q8_0)
            kind = gguf.GGMLQuantizationType.Q8_0
        data[t.name] = d
        writer.add_tensor_info(t.name, d.shape, d.dtype, d.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in keep:
        writer.write_tensor_data(data[t.name], tensor_endianess=reader.endianess)
    writer.close()
    os.replace(tmp, dst)
    print(f"{dst}: {n} of {old} blocks, {len(keep)} of {len(reader.tensors)} tensors{', Q8_0' if q8 else ''}")


if __name__ == "__main__":
    main()
