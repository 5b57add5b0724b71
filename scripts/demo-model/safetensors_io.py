"""Reads and writes .safetensors files (8-byte little-endian header length, JSON header, raw data)
without the safetensors package: F32 and BF16 tensors, which is all the demo model uses."""
import json
import struct

import torch

DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16"}
NAMES_DTYPE = {name: dtype for dtype, name in DTYPE_NAMES.items()}


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: reinterpret the same 2-byte patterns as int16.
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def save(tensors: dict, path, dtype: torch.dtype, metadata: dict | None = None) -> None:
    """Writes every tensor converted to `dtype`, in key order, with the header padded to 8 bytes."""
    header = {"__metadata__": metadata or {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        data = tensor_bytes(tensors[name].to(dtype))
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)


def load(path) -> dict:
    """Returns {name: float32 tensor}."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        chunk = bytearray(raw[base + begin:base + end])
        if info["dtype"] == "BF16":
            t = torch.frombuffer(chunk, dtype=torch.int16).view(torch.bfloat16)
        else:
            t = torch.frombuffer(chunk, dtype=NAMES_DTYPE[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out
