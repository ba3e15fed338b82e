"""Pillow resize outputs for fusion-clip's resampler test.

Usage (from this folder): python make_resize_fixture.py ../clip-tiny/images/1.png

Crops a 40x30 patch of the photograph (source.png) and resizes it with every Pillow filter
(0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming) to sizes that shrink, grow
and change one axis only. Writes expected.safetensors: one uint8 tensor [height, width, 3] per
case, named "<filter>_<width>x<height>" (the safetensors file is written by hand, so only
Pillow is needed).
"""
import json, struct, sys
from PIL import Image

src = Image.open(sys.argv[1]).convert("RGB").crop((300, 200, 340, 230))
src.save("source.png")
tensors = {}
for f in range(6):
    for w, h in [(17, 11), (57, 43), (40, 13), (23, 30)]:
        tensors[f"{f}_{w}x{h}"] = (h, w, src.resize((w, h), resample=f).tobytes())
header, blobs, offset = {}, b"", 0
for name, (h, w, data) in tensors.items():
    header[name] = {"dtype": "U8", "shape": [h, w, 3], "data_offsets": [offset, offset + len(data)]}
    blobs += data
    offset += len(data)
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
with open("expected.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + blobs)
