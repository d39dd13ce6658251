#!/usr/bin/env python3
"""Make the image test fixtures of zeroseg: small inputs and Pillow/transformers/torch
reference outputs, into Tests/ZeroSegTests/Fixtures/images/ (read by ImageTests.swift).

    pip install pillow numpy scikit-image torch transformers
    python scripts/reference/make_image_fixtures.py

What the references are:
  * decoded/*  ImageOps.exif_transpose(Image.open(p)).convert("RGB") as uint8 HWC.
                zeroseg applies the EXIF orientation on purpose; CLIP's processor does not.
  * resize/*    Image.resize((w, h), Image.BICUBIC) of a decoded picture (uint8 HWC).
  * clip/*      transformers' CLIP processor with the PIL backend (CLIPImageProcessorPil in
                transformers 5, CLIPImageProcessor in 4), float32 CHW. The torchvision
                CLIPImageProcessor of transformers 5 is compared to it in manifest.json
                ("torchvision_vs_pil"): information only.
  * bilinear/*  torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
                antialias=False) of the decoded float32 picture as NCHW, back to HWC.
Arrays are .npy (uint8 '|u1' or float32 '<f4'); large uint8 references are PNG
(RGB 8-bit, checked exactly by the PNG decoder tests).

Inputs are cut from scikit-image's sample pictures (astronaut: public domain, NASA;
chelsea and coffee: CC0), so the script needs scikit-image. Everything is deterministic.
"""
import io
import json
import os
import platform
import shutil
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, ImageOps, features

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "images")

manifest = {
    "regenerate": "python scripts/reference/make_image_fixtures.py",
    "versions": {},
    "decode": [],      # {"input", "reference", "codec": "png"|"jpeg"}
    "errors": [],      # {"input", "message_contains"}
    "resize": [],      # {"input", "width", "height", "reference"}
    "clip": [],        # {"input", "size", "crop", "reference", "torchvision_vs_pil"}
    "bilinear": [],    # {"input", "width", "height", "reference"}
}


# ---------------------------------------------------------------- helpers

def path(*parts):
    p = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def rel(p):
    return os.path.relpath(p, OUT)


def write_bytes(name, data):
    p = path("inputs", name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def save_pil(name, im, **kw):
    b = io.BytesIO()
    fmt = kw.pop("format")
    im.save(b, fmt, **kw)
    return write_bytes(name, b.getvalue())


def pil_decode(p):
    with Image.open(p) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def save_u8(name, arr):
    """uint8 HWC reference, stored as an 8-bit RGB PNG (smaller than .npy; the PNG decoder
    that reads it back is itself checked against raw .npy references)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    p = path(name + ".png")
    Image.fromarray(arr, "RGB").save(p, optimize=True)
    return rel(p)


def save_f32(name, arr):
    p = path(name + ".npy")
    np.save(p, np.ascontiguousarray(arr, dtype="<f4"))
    return rel(p)


def add_decode(p, codec):
    ref = save_u8("decoded/" + os.path.basename(p).replace(".", "_"), pil_decode(p))
    manifest["decode"].append({"input": rel(p), "reference": ref, "codec": codec})


def add_error(p, contains):
    manifest["errors"].append({"input": rel(p), "message_contains": contains})


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(w, h, depth, color_type, rows, extra=b"", interlace=0, adam7_passes=None):
    """A PNG written by hand (for what Pillow cannot write). rows: packed row bytes."""
    if adam7_passes is not None:
        raw = b"".join(b"\x00" + r for p in adam7_passes for r in p)
    else:
        raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


def pack_bits(values, depth):
    bits = "".join(format(int(v), "0%db" % depth) for v in values)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def adam7_passes(arr, pack_row):
    """Split arr [H, W, ...] into the 7 Adam7 sub-images, each a list of packed rows."""
    starts = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    h, w = arr.shape[:2]
    passes = []
    for x0, y0, dx, dy in starts:
        sub = arr[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        passes.append([pack_row(r) for r in sub])
    return passes


# ---------------------------------------------------------------- source pictures

def sources():
    import skimage
    from skimage import data

    manifest["versions"]["scikit-image"] = skimage.__version__
    astronaut = Image.fromarray(data.astronaut())     # 512x512, public domain (NASA)
    chelsea = Image.fromarray(data.chelsea())         # 451x300, CC0
    coffee = Image.fromarray(data.coffee())           # 600x400, CC0
    big = astronaut.resize((640, 640), Image.BICUBIC).crop((0, 60, 640, 540))       # 640x480
    small = chelsea.crop((120, 40, 314, 162)).resize((97, 61), Image.BICUBIC)      # 97x61
    mid = coffee.crop((100, 50, 550, 350)).resize((300, 200), Image.BICUBIC)       # 300x200
    tiny = chelsea.crop((150, 30, 350, 150)).resize((40, 24), Image.BICUBIC)       # 40x24, asymmetric
    return big, small, mid, tiny


def check_pass_order(n=400):
    """Pillow resizes in two separable 8-bit passes. Up to Pillow 12 the horizontal one always
    came first; Pillow 13 runs the vertical one first when the height shrinks by more than twice
    as many pixels as the width (PR #9549). zeroseg's port (pilVerticalFirst in
    Sources/ZeroSegImaging/Preprocess.swift) encodes that rule: check it against this Pillow."""
    rng = np.random.default_rng(99)
    checked = 0
    for _ in range(n):
        W, H = (int(v) for v in rng.integers(2, 120, 2))
        w, h = (int(v) for v in rng.integers(1, 160, 2))
        if w == W or h == H:
            continue
        im = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        r = np.asarray(im.resize((w, h), Image.BICUBIC))
        hf = np.asarray(im.resize((w, H), Image.BICUBIC).resize((w, h), Image.BICUBIC))
        vf = np.asarray(im.resize((W, h), Image.BICUBIC).resize((w, h), Image.BICUBIC))
        vertical_first = h < H and H - h > 2 * (W - w)
        expected = vf if vertical_first else hf
        if not (r == expected).all():
            sys.exit("Pillow %s resizes %dx%d -> %dx%d in another pass order than zeroseg's rule; "
                     "update pilVerticalFirst in Sources/ZeroSegImaging/Preprocess.swift" % (PIL.__version__, W, H, w, h))
        checked += 1
    manifest["pillow_pass_order_checked_cases"] = checked


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    import torch
    import transformers
    from transformers import CLIPImageProcessor
    try:
        from transformers import CLIPImageProcessorPil as PilProcessor  # transformers >= 5
    except ImportError:
        PilProcessor = CLIPImageProcessor                                # transformers 4: PIL already
    manifest["versions"].update({
        "python": platform.python_version(), "pillow": PIL.__version__,
        "pillow_libjpeg_turbo": features.version("libjpeg_turbo"), "pillow_zlib": features.version("zlib"),
        "numpy": np.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
    })
    check_pass_order()
    big, small, mid, tiny = sources()
    rng = np.random.default_rng(1234)
    small_np = np.asarray(small)

    # ---------------- PNG inputs (exact)
    pngs = []
    pngs.append(save_pil("png_rgb_97x61.png", small, format="PNG"))
    pngs.append(save_pil("png_gray_97x61.png", small.convert("L"), format="PNG"))
    rgba = small.copy()
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (61, 97), dtype=np.uint8)))
    pngs.append(save_pil("png_rgba_97x61.png", rgba, format="PNG"))
    la = small.convert("LA")
    pngs.append(save_pil("png_la_50x40.png", la.crop((0, 0, 50, 40)), format="PNG"))
    pal = small.quantize(colors=200)
    pngs.append(save_pil("png_palette_trns_97x61.png", pal, format="PNG", transparency=bytes([0, 64, 128, 255] * 10)))
    # 16-bit grey as Pillow writes it (mode I;16): a ramp 0..65535 whose low part (< 256) shows the clipping
    g16 = (np.linspace(0, 1, 40 * 30) ** 4 * 65535).astype(np.uint16).reshape(30, 40)
    g16[0, :20] = np.arange(20) * 13
    pngs.append(save_pil("png_gray16_40x30.png", Image.fromarray(g16), format="PNG"))
    # hand-written: 16-bit RGB / RGBA / LA, 1/2/4-bit grey with tRNS, 4-bit palette with
    # indices past the palette, Adam7 interlaced RGB and palette
    w, h = 33, 21
    v16 = rng.integers(0, 65536, (h, w, 4), dtype=np.uint16)
    v16[0, :8, :] = np.array([0, 1, 255, 256, 0x80FF, 0xFF00, 65535, 0x1234], dtype=np.uint16)[:, None]
    for name, ct, ch in (("png_rgb16_33x21.png", 2, 3), ("png_rgba16_33x21.png", 6, 4), ("png_la16_33x21.png", 4, 2)):
        rows = [r[:, :ch].astype(">u2").tobytes() for r in v16]
        pngs.append(write_bytes(name, png_bytes(w, h, 16, ct, rows)))
    for depth in (1, 2, 4):
        vals = rng.integers(0, 1 << depth, (h, w))
        rows = [pack_bits(r, depth) for r in vals]
        trns = png_chunk(b"tRNS", struct.pack(">H", 1))
        pngs.append(write_bytes("png_gray%d_33x21.png" % depth, png_bytes(w, h, depth, 0, rows, trns)))
    plte = bytes(rng.integers(0, 256, 10 * 3, dtype=np.uint8))  # 10 colours; indices 10..15 are past the end
    idx = rng.integers(0, 16, (h, w))
    pngs.append(write_bytes("png_palette4_oob_33x21.png",
                            png_bytes(w, h, 4, 3, [pack_bits(r, 4) for r in idx],
                                      png_chunk(b"PLTE", plte) + png_chunk(b"tRNS", bytes([0, 128])))))
    pngs.append(write_bytes("png_interlaced_rgb_97x61.png",
                            png_bytes(97, 61, 8, 2, None, interlace=1,
                                      adam7_passes=adam7_passes(small_np, lambda r: r.tobytes()))))
    idx2 = rng.integers(0, 4, (61, 97))
    pngs.append(write_bytes("png_interlaced_pal2_97x61.png",
                            png_bytes(97, 61, 2, 3, None, png_chunk(b"PLTE", bytes(range(12))), interlace=1,
                                      adam7_passes=adam7_passes(idx2, lambda r: pack_bits(r, 2)))))
    # EXIF orientation in PNG: eXIf chunk, and ImageMagick's "Raw profile type exif" text
    exif6 = Image.Exif()
    exif6[0x0112] = 6
    pngs.append(save_pil("png_exif6_40x24.png", tiny, format="PNG", exif=exif6.tobytes()))
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    raw = Image.Exif()
    raw[0x0112] = 8
    data = raw.tobytes()[6:] if raw.tobytes().startswith(b"Exif\x00\x00") else raw.tobytes()
    info.add_text("Raw profile type exif", "\nexif\n%8d\n%s\n" % (len(data), data.hex()), zip=True)
    pngs.append(save_pil("png_rawexif8_40x24.png", tiny, format="PNG", pnginfo=info))
    for p in pngs:
        add_decode(p, "png")

    # ---------------- JPEG inputs (libjpeg-turbo vs Pillow's bundled libjpeg-turbo)
    jpgs = []
    jpgs.append(save_pil("jpeg_baseline_640x480.jpg", big, format="JPEG", quality=90))
    jpgs.append(save_pil("jpeg_progressive_300x200.jpg", mid, format="JPEG", quality=85, progressive=True))
    jpgs.append(save_pil("jpeg_gray_97x61.jpg", small.convert("L"), format="JPEG", quality=90))
    jpgs.append(save_pil("jpeg_444_97x61.jpg", small, format="JPEG", quality=95, subsampling=0))
    jpgs.append(save_pil("jpeg_422_97x61.jpg", small, format="JPEG", quality=95, subsampling=1))
    jpgs.append(save_pil("jpeg_420_97x61.jpg", small, format="JPEG", quality=95, subsampling=2))
    cmyk = np.concatenate([255 - small_np, rng.integers(0, 256, (61, 97, 1), dtype=np.uint8)], axis=2)
    cmyk[..., 3] = (np.arange(97)[None, :] * 255 // 96).astype(np.uint8)  # K ramp left to right
    jpgs.append(save_pil("jpeg_cmyk_97x61.jpg", Image.fromarray(cmyk, "CMYK"), format="JPEG", quality=95))
    for o in range(1, 9):
        ex = Image.Exif()
        ex[0x0112] = o
        jpgs.append(save_pil("jpeg_exif%d_40x24.jpg" % o, tiny, format="JPEG", quality=95, exif=ex.tobytes()))
        manifest["same_pixels_orientation"] = "jpeg_exif1..8 hold the same JPEG data with only the EXIF orientation changed"
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    jpgs.append(save_pil("jpeg_xmp6_40x24.jpg", tiny, format="JPEG", quality=95, xmp=xmp))
    # wrong extension: a JPEG named .png (format comes from the bytes)
    with open(jpgs[3], "rb") as f:
        jpgs.append(write_bytes("jpeg_named_as.png", f.read()))
    # RGB stored without YCbCr conversion (Adobe transform 0)
    jpgs.append(save_pil("jpeg_rgb_adobe_97x61.jpg", small, format="JPEG", quality=95, keep_rgb=True))
    # two stray bytes before a marker: libjpeg's harmless "extraneous bytes" warning; decodes normally
    with open(jpgs[5], "rb") as f:  # jpeg_420_97x61.jpg
        j420 = f.read()
    dqt = j420.index(b"\xff\xdb")
    jpgs.append(write_bytes("jpeg_extraneous_bytes_97x61.jpg", j420[:dqt] + b"\x00\x00" + j420[dqt:]))
    for p in jpgs:
        add_decode(p, "jpeg")

    # ---------------- broken inputs
    with open(jpgs[5], "rb") as f:  # jpeg_420_97x61.jpg
        full = f.read()
    assert full.endswith(b"\xff\xd9")
    # a marker in the middle of the entropy-coded data: libjpeg warns "Corrupt JPEG data" and
    # would fill the rest with grey (Pillow accepts that silently; zeroseg refuses it)
    sos = full.index(b"\xff\xda")
    mid = sos + (len(full) - sos) // 2
    add_error(write_bytes("jpeg_corrupt_data.jpg", full[:mid] + b"\xff\xd9" + full[mid:]), "corrupt or truncated JPEG")
    # only the EOI marker missing, all scan data present: Pillow raises "image file is truncated" too
    add_error(write_bytes("jpeg_no_eoi.jpg", full[:-2]), "truncated JPEG")
    add_error(write_bytes("jpeg_truncated.jpg", full[: len(full) * 6 // 10]), "truncated JPEG")
    with open(jpgs[1], "rb") as f:
        prog = f.read()
    add_error(write_bytes("jpeg_progressive_truncated.jpg", prog[: len(prog) // 2]), "truncated JPEG")
    sof = full.index(b"\xff\xc0")
    bad = bytearray(full)
    bad[sof + 9] = 7  # 7 colour components in the frame header
    add_error(write_bytes("jpeg_corrupt_header.jpg", bytes(bad[: sof + 40])), "JPEG")
    with open(pngs[0], "rb") as f:
        png0 = f.read()
    add_error(write_bytes("png_truncated.png", png0[: len(png0) * 7 // 10]), "truncated PNG")
    idat = png0.index(b"IDAT")
    bad = bytearray(png0)
    bad[idat + 40] ^= 0xFF
    add_error(write_bytes("png_corrupt_crc.png", bytes(bad)), "corrupt or truncated PNG")
    add_error(write_bytes("not_an_image.png", b"hello, this is text, not a picture\n"), "not a JPEG or PNG")
    add_error(write_bytes("gif_named_as.jpg", open(os.path.join(os.path.dirname(__import__("skimage").__file__), "data", "no_time_for_that_tiny.gif"), "rb").read()[:64]), "GIF is not supported")
    add_error(write_bytes("empty.jpg", b""), "not a JPEG or PNG")

    # ---------------- resize stage (Pillow BICUBIC on uint8)
    # (200, 20) and (90, 10) take Pillow 13's vertical-pass-first order: the height shrinks by
    # more than twice what the width shrinks (Pillow PR #9549; checked by check_pass_order()).
    base = {"png_rgb_97x61": pil_decode(path("inputs", "png_rgb_97x61.png")),
            "jpeg_progressive_300x200": pil_decode(path("inputs", "jpeg_progressive_300x200.jpg"))}
    for name, (w2, h2) in [("png_rgb_97x61", s) for s in [(40, 25), (150, 90), (97, 30), (30, 61), (200, 20), (90, 10), (1, 1), (13, 200)]] + \
                          [("jpeg_progressive_300x200", s) for s in [(64, 43), (96, 64), (150, 101)]]:
        out = np.asarray(Image.fromarray(base[name]).resize((w2, h2), Image.BICUBIC))
        ref = save_u8("resize/%s_to_%dx%d" % (name, w2, h2), out)
        manifest["resize"].append({"input": "inputs/%s.%s" % (name, "png" if name.startswith("png") else "jpg"),
                                   "width": w2, "height": h2, "reference": ref})

    # ---------------- CLIP preprocessing
    def clip(inp, size, crop):
        im = Image.fromarray(pil_decode(path("inputs", inp)))
        kw = dict(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop})
        ref = PilProcessor(**kw)(images=im, return_tensors="np")["pixel_values"][0]
        tv = CLIPImageProcessor(**kw)(images=im, return_tensors="np")["pixel_values"][0]
        name = "clip/%s_s%d_c%d" % (inp.replace(".", "_"), size, crop)
        manifest["clip"].append({"input": "inputs/" + inp, "size": size, "crop": crop, "reference": save_f32(name, ref),
                                 "torchvision_vs_pil": {"processor": type(CLIPImageProcessor(**kw)).__name__,
                                                        "max_abs_diff": float(np.abs(tv - ref).max())}})
    clip("jpeg_baseline_640x480.jpg", 224, 224)
    clip("png_rgb_97x61.png", 64, 64)           # slight upscale (61 -> 64)
    clip("png_rgb_97x61.png", 112, 80)          # 2x upscale, crop smaller than the image
    clip("png_rgb_97x61.png", 48, 64)           # crop larger than the resized picture: zero padding
    clip("jpeg_progressive_300x200.jpg", 64, 64)
    clip("jpeg_exif6_40x24.jpg", 64, 64)        # portrait after EXIF rotation
    clip("png_gray16_40x30.png", 64, 64)
    clip("jpeg_cmyk_97x61.jpg", 64, 64)

    # ---------------- bilinear (torch, no antialias)
    for inp, (w2, h2) in [("png_rgb_97x61.png", (80, 50)), ("png_rgb_97x61.png", (40, 25)),
                          ("png_rgb_97x61.png", (97, 24)), ("jpeg_progressive_300x200.jpg", (71, 53))]:
        x = torch.from_numpy(pil_decode(path("inputs", inp)).astype(np.float32)).permute(2, 0, 1)[None].contiguous()
        y = torch.nn.functional.interpolate(x, size=(h2, w2), mode="bilinear", align_corners=False, antialias=False)
        ref = save_f32("bilinear/%s_to_%dx%d" % (inp.replace(".", "_"), w2, h2), y[0].permute(1, 2, 0).numpy())
        manifest["bilinear"].append({"input": "inputs/" + inp, "width": w2, "height": h2, "reference": ref})

    with open(path("manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print("wrote %d files, %.2f MB, to %s" % (sum(len(ns) for _, _, ns in os.walk(OUT)), total / 1e6, OUT))


if __name__ == "__main__":
    sys.exit(main())
