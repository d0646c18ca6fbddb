#!/usr/bin/env python3
"""Generates the small torch.save files that tests/torch_checkpoint_test.cc parses.

Run with any Python that has torch (checked with torch 2.11):
    python tests/data/torch-checkpoint/make_checkpoints.py
Writes, next to this script:
  mixed_legacy.pt, mixed_zip.pt   one object graph with every storage type, views, shared storages,
                                  a Parameter, an empty and a 0-dim tensor, an argparse.Namespace, an
                                  OrderedDict, sets, bytes, int keys and an unknown class holding a
                                  tensor; legacy (_use_new_zipfile_serialization=False) and zip format
  mixed_proto4_legacy.pt, mixed_proto4_zip.pt   the same object with pickle_protocol=4 (FRAME,
                                  SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, ...)
  mixed_zip64.pt                  mixed_zip.pt repacked as zip64 (zip64 end records and extra fields)
  mixed_deflated.pt               mixed_zip.pt with its entries deflate-compressed (unsupported)
  fairseq_fp16_legacy.pt, fairseq_fp16_zip.pt   a tiny fairseq-style checkpoint with half weights and
                                  tied parameters
  uint16_zip.pt                   a uint16 tensor (_rebuild_tensor_v3, an UntypedStorage; unsupported)
and copies mixed_legacy.pt, mixed_zip.pt and fairseq_fp16_legacy.pt into
tests/fuzz/corpus/fuzz_torch_checkpoint/ as seeds.
Every file is loaded back with torch.load to check that torch itself accepts it.
"""
import argparse
import collections
import os
import shutil
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "fuzz", "corpus", "fuzz_torch_checkpoint")


class Thing:
    """A class the C++ parser does not know: it must become a placeholder object."""

    def __init__(self, weight, note):
        self.weight = weight
        self.note = note


def ramp(n, dtype, scale=0.25, shift=-1.0):
    return (torch.arange(n, dtype=torch.float64) * scale + shift).to(dtype)


def make_mixed():
    f32 = ramp(6, torch.float32).reshape(2, 3)
    model = collections.OrderedDict()
    model["f32"] = f32
    model["f16"] = ramp(5, torch.float16, 0.5)
    model["bf16"] = ramp(4, torch.bfloat16).reshape(2, 2)
    model["f64"] = ramp(3, torch.float64, 1.0 / 3)
    model["i64"] = torch.tensor([-(2**40), 7], dtype=torch.int64)
    model["i32"] = torch.tensor([-5, 2**30], dtype=torch.int32)
    model["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    model["i8"] = torch.tensor([-100, 100], dtype=torch.int8)
    model["u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    model["bool"] = torch.tensor([True, False, True])
    model["f32_t"] = f32.t()  # non-contiguous view of f32's storage
    model["f32_row1"] = f32[1]  # offset view (storage_offset 3)
    model["f32_tied"] = f32  # the same tensor under a second key
    model["scalar"] = torch.tensor(3.5)
    model["empty"] = torch.zeros(0, 4)
    model["expanded"] = ramp(3, torch.float32).reshape(1, 3).expand(4, 3)  # stride 0
    model["param"] = torch.nn.Parameter(ramp(4, torch.float32, 2.0))
    args = argparse.Namespace(
        decoder_layers=2,
        adaptive_softmax_cutoff="10,20",
        lr=[0.25],
        flag=True,
        nothing=None,
        name="caf\u00e9 \u2603",
        ratio=0.5,
        big=2**62,
        most_negative=-(2**63),
        shape=(1, 2),
    )
    return {
        "args": args,
        "model": model,
        "optimizer_history": [
            {"thing": Thing(ramp(2, torch.float32, 1.0, 9.0), "opaque"), "ids": {3, 1, 2}},
            frozenset([4]),
        ],
        "extra_state": {"nested": [[1, [2, (3, 4)]]], 7: "int key", "raw": b"\x00\xffab"},
        "last_optimizer_state": None,
    }


def make_fairseq_fp16():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 4, generator=g).half()
    proj = torch.randn(4, 4, generator=g).half()
    model = collections.OrderedDict()
    model["decoder.version"] = torch.tensor([3.0]).half()
    model["decoder.embed_tokens.embeddings.0.0.weight"] = emb
    model["decoder.embed_tokens.embeddings.0.1.weight"] = proj
    model["decoder.layers.0.fc1.weight"] = torch.randn(8, 4, generator=g).half()
    model["decoder.layers.0.fc1.bias"] = torch.randn(8, generator=g).half()
    model["decoder.adaptive_softmax.version"] = torch.tensor([1])
    model["decoder.adaptive_softmax.head.word_proj.weight"] = emb  # tied
    args = argparse.Namespace(arch="transformer_lm_wiki103", decoder_layers=1, fp16=True,
                              adaptive_softmax_cutoff="6", decoder_embed_dim=4)
    return {"args": args, "model": model, "optimizer_history": [], "extra_state": {},
            "last_optimizer_state": None}


def save(obj, name, **kwargs):
    path = os.path.join(HERE, name)
    torch.save(obj, path, **kwargs)
    torch.load(path, weights_only=False)
    return path


def repack(src, name, compression, force_zip64):
    path = os.path.join(HERE, name)
    saved = (zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT)
    if force_zip64:  # every size and offset then goes through the zip64 records
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
    try:
        prefix = os.path.splitext(name)[0]
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", compression) as zout:
            for info in zin.infolist():
                renamed = prefix + info.filename[info.filename.index("/"):]
                zout.writestr(zipfile.ZipInfo(renamed, date_time=(2020, 1, 1, 0, 0, 0)),
                              zin.read(info.filename), compress_type=compression)
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved
    return path


def main():
    mixed = make_mixed()
    legacy = save(mixed, "mixed_legacy.pt", _use_new_zipfile_serialization=False)
    zipped = save(mixed, "mixed_zip.pt")
    save(mixed, "mixed_proto4_legacy.pt", pickle_protocol=4, _use_new_zipfile_serialization=False)
    save(mixed, "mixed_proto4_zip.pt", pickle_protocol=4)
    torch.load(repack(zipped, "mixed_zip64.pt", zipfile.ZIP_STORED, True), weights_only=False)
    repack(zipped, "mixed_deflated.pt", zipfile.ZIP_DEFLATED, False)
    fairseq = make_fairseq_fp16()
    small = save(fairseq, "fairseq_fp16_legacy.pt", _use_new_zipfile_serialization=False)
    save(fairseq, "fairseq_fp16_zip.pt")
    save({"u16": torch.tensor([1, 2, 65535], dtype=torch.uint16)}, "uint16_zip.pt")
    os.makedirs(CORPUS, exist_ok=True)
    shutil.copy(legacy, os.path.join(CORPUS, "mixed_legacy.pt"))
    shutil.copy(zipped, os.path.join(CORPUS, "mixed_zip.pt"))
    shutil.copy(small, os.path.join(CORPUS, "fairseq_fp16_legacy.pt"))
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".pt"):
            print(name, os.path.getsize(os.path.join(HERE, name)))


if __name__ == "__main__":
    main()
