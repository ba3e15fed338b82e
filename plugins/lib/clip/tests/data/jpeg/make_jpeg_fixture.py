"""JPEG fixtures for fusion-clip's decoder test, with Pillow's decoding of them as the reference.

Usage (from this folder): python make_jpeg_fixture.py ../clip-tiny/images/1.png

Writes color.jpg (4:2:0 chroma subsampling, Pillow's default), gray.jpg (one channel), and for
each the RGB bytes Pillow decodes (`Image.open(f).convert("RGB")`), as color.rgb / gray.rgb.
"""
import sys
from PIL import Image

src = Image.open(sys.argv[1]).convert("RGB").resize((96, 64), Image.BICUBIC)
src.save("color.jpg", quality=85)
src.convert("L").save("gray.jpg", quality=85)
for name in ["color", "gray"]:
    im = Image.open(f"{name}.jpg")
    print(name, im.mode, im.size)
    with open(f"{name}.rgb", "wb") as f:
        f.write(im.convert("RGB").tobytes())
