#!/usr/bin/env python3
"""Regenerate the small test fixtures of `fusion-datasets`.

Run from anywhere: `python3 plugins/lib/datasets/tests/data/make_fixtures.py`
(needs `pip install pyarrow pillow`; `datasets` is optional and only adds
`hf_datasets_lib/`). The output is deterministic apart from the parquet
`created_by` string, and it stays well under 200 KB.

Every image is a tiny 4x4 picture whose top-left pixel encodes its global
row number (`red = row`, `green = label`), so the Rust tests can decode it and
check that rows come back in the right order and with the right label.

Layouts written (all mimic what Hugging Face writes):

* `hf_parquet/`: a `push_to_hub`-style repo: `data/<split>-0000N-of-0000M.parquet`
  with an `image: struct<bytes: binary, path: string>` column, `label: int64`,
  snappy compression and the `huggingface` schema metadata (ClassLabel names).
  Splits: `test` (1 file, 2 row groups), `train` (2 shards), `gaussian_noise`
  (a FusionBench corruption split) and an old-style hashed file name for
  `contrast` (`data/contrast-00000-of-00001-<hash>.parquet`).
* `hf_convert/`: the `refs/convert/parquet` layout, `<config>/<split>/0000.parquet`,
  with two configs (`cropped_digits`, `full_numbers`) that both have `test`.
* `variants/plain_binary_zstd.parquet`: plain `binary` images named `img`,
  `labels: int32`, zstd, row groups of 2 rows.
* `image_folder/`: `test/<class>/*.png|jpg` and `train/<class>/*.png`.
* `idx/`: `t10k-{images-idx3,labels-idx1}-ubyte` (plain) and
  `train-...-ubyte.gz` (gzip), 5 and 3 images of 3x4 pixels.
* `hf_datasets_lib/` (only if `datasets` imports): the same `test` split written
  by `datasets.Dataset.to_parquet`.
"""

import gzip
import io
import json
import os
import shutil
import struct

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["cat", "dog", "bird"]


def png_bytes(row: int, label: int, mode: str = "RGB") -> bytes:
    img = Image.new(mode, (4, 4), (row, label * 50, 7) if mode == "RGB" else row)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(row: int, label: int) -> bytes:
    img = Image.new("RGB", (8, 8), (row, label * 50, 7))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def hf_metadata(image_col="image", label_col="label") -> dict:
    features = {
        image_col: {"_type": "Image"},
        label_col: {"names": CLASSES, "_type": "ClassLabel"},
    }
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


HF_SCHEMA = pa.schema(
    [
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("label", pa.int64()),
    ]
)


def hf_table(rows: range, labels) -> pa.Table:
    images = [{"bytes": png_bytes(r, l), "path": f"img_{r:04d}.png"} for r, l in zip(rows, labels)]
    return pa.table({"image": images, "label": list(labels)}, schema=HF_SCHEMA.with_metadata(hf_metadata()))


def write_hf(path: str, table: pa.Table, row_group_size=None, compression="snappy"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, compression=compression)


def labels_for(rows: range):
    return [r % len(CLASSES) for r in rows]


def make_hf_parquet(root: str):
    # test: 5 rows in 2 row groups (3 + 2).
    write_hf(f"{root}/data/test-00000-of-00001.parquet", hf_table(range(0, 5), labels_for(range(0, 5))), 3)
    # train: 2 shards, 4 + 3 rows; rows keep counting across shards.
    write_hf(f"{root}/data/train-00000-of-00002.parquet", hf_table(range(10, 14), labels_for(range(10, 14))))
    write_hf(f"{root}/data/train-00001-of-00002.parquet", hf_table(range(14, 17), labels_for(range(14, 17))))
    # FusionBench corruption splits are plain named splits.
    write_hf(f"{root}/data/gaussian_noise-00000-of-00001.parquet", hf_table(range(20, 23), labels_for(range(20, 23))))
    write_hf(
        f"{root}/data/contrast-00000-of-00001-3f2a9c1b7d6e5f40.parquet",
        hf_table(range(30, 32), labels_for(range(30, 32))),
    )
    with open(f"{root}/README.md", "w") as f:
        f.write("---\nlicense: mit\n---\nTiny fixture mimicking a Hugging Face parquet dataset repo.\n")


def make_hf_convert(root: str):
    write_hf(f"{root}/cropped_digits/test/0000.parquet", hf_table(range(40, 43), labels_for(range(40, 43))))
    write_hf(f"{root}/cropped_digits/test/0001.parquet", hf_table(range(43, 45), labels_for(range(43, 45))))
    write_hf(f"{root}/full_numbers/test/0000.parquet", hf_table(range(50, 52), labels_for(range(50, 52))))
    write_hf(f"{root}/full_numbers/train/0000.parquet", hf_table(range(60, 61), labels_for(range(60, 61))))


def make_variants(root: str):
    rows = range(70, 76)
    labels = labels_for(rows)
    schema = pa.schema([pa.field("img", pa.binary()), pa.field("labels", pa.int32())])
    table = pa.table({"img": [png_bytes(r, l) for r, l in zip(rows, labels)], "labels": labels}, schema=schema)
    write_hf(f"{root}/plain_binary_zstd.parquet", table, row_group_size=2, compression="zstd")


def make_image_folder(root: str):
    row = 0
    for split, per_class in (("test", 2), ("train", 1)):
        for label, name in enumerate(sorted(CLASSES)):
            os.makedirs(f"{root}/{split}/{name}", exist_ok=True)
            for k in range(per_class):
                if split == "test" and name == "dog" and k == 1:
                    with open(f"{root}/{split}/{name}/{k:02d}.jpg", "wb") as f:
                        f.write(jpeg_bytes(row, label))
                else:
                    with open(f"{root}/{split}/{name}/{k:02d}.png", "wb") as f:
                        f.write(png_bytes(row, label))
                row += 1
    # Not an image: must be skipped.
    with open(f"{root}/test/cat/notes.txt", "w") as f:
        f.write("not an image\n")


def idx_bytes(dtype_code: int, dims, payload: bytes) -> bytes:
    return struct.pack(">BBBB", 0, 0, dtype_code, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + payload


def make_idx(root: str):
    os.makedirs(root, exist_ok=True)
    for prefix, n, gz in (("t10k", 5, False), ("train", 3, True)):
        rows, cols = 3, 4
        pixels = bytearray()
        for i in range(n):
            pixels += bytes((i * 16 + p) % 256 for p in range(rows * cols))
        labels = bytes((i * 3) % 10 for i in range(n))
        images = idx_bytes(0x08, (n, rows, cols), bytes(pixels))
        label_file = idx_bytes(0x08, (n,), labels)
        for name, data in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", label_file)):
            if gz:
                with gzip.GzipFile(f"{root}/{name}.gz", "wb", mtime=0) as f:
                    f.write(data)
            else:
                with open(f"{root}/{name}", "wb") as f:
                    f.write(data)


def make_hf_datasets_lib(root: str) -> bool:
    try:
        import datasets
    except ImportError:
        print("datasets is not installed: skipping hf_datasets_lib/")
        return False
    rows = range(80, 84)
    labels = labels_for(rows)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(io.BytesIO(png_bytes(r, l))) for r, l in zip(rows, labels)], "label": labels},
        features=features,
    )
    os.makedirs(f"{root}/data", exist_ok=True)
    ds.to_parquet(f"{root}/data/test-00000-of-00001.parquet")
    print(f"datasets {datasets.__version__}: wrote {root}/data/test-00000-of-00001.parquet")
    return True


def main():
    for sub in ("hf_parquet", "hf_convert", "variants", "image_folder", "idx", "hf_datasets_lib"):
        shutil.rmtree(f"{HERE}/{sub}", ignore_errors=True)
    make_hf_parquet(f"{HERE}/hf_parquet")
    make_hf_convert(f"{HERE}/hf_convert")
    make_variants(f"{HERE}/variants")
    make_image_folder(f"{HERE}/image_folder")
    make_idx(f"{HERE}/idx")
    make_hf_datasets_lib(f"{HERE}/hf_datasets_lib")
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(HERE) for f in fs)
    print(f"fixtures: {total} bytes")


if __name__ == "__main__":
    main()
