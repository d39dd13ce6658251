#!/usr/bin/env python3
"""Build the tokenizer reference corpus for ZeroSeg's Swift CLIP tokenizer.

Writes Tests/ZeroSegTests/Fixtures/tokenizer_corpus.json:

    {"generator": ..., "open_clip": ..., "ftfy": ..., "python": ..., "regex": ...,
     "items": [{"text": ..., "ids": [...]}, ...],
     "hf_files": {...}, "hf_check": {...}, "excluded_mojibake": [...]}

`ids` are `open_clip.tokenize(text)` (context length 77) without the zero padding:
[49406] + ids + [49407], truncated to 77 with the end token kept last.

Strings on which ftfy's mojibake repair (`fix_encoding`, deliberately not ported)
changes the result are not in `items`; they are listed in `excluded_mojibake`.

The script also writes CLIP's vocabulary as Hugging Face `vocab.json` / `merges.txt`
with the `tokenizers` library (the files `Tokenizer.writeHF` must reproduce byte for
byte: their sizes and CRC-32s go in `hf_files`), loads them with transformers'
CLIPTokenizer and compares its ids with open_clip's on a subset.  Differences between
HF and open_clip are reported (`hf_check`), not fixed: HF does not run ftfy/html
unescaping and spells the special tokens <|startoftext|>/<|endoftext|>.

Usage, from the repository root (open_clip_torch==3.3.0 ftfy==6.3.1 regex transformers):

    python scripts/reference/make_tokenizer_corpus.py
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import zlib

import ftfy
import open_clip
import regex
import transformers
from open_clip.tokenizer import SimpleTokenizer
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "ZeroSegTests", "Fixtures", "tokenizer_corpus.json")
GENERATOR = "scripts/reference/make_tokenizer_corpus.py"
EOT = 49407

# ---------------------------------------------------------------------------
# Class names of the usual zero-shot segmentation benchmarks (mmsegmentation
# spellings) -- ImageNet-1k and the 80 OpenAI templates come from open_clip.
# ---------------------------------------------------------------------------
ADE20K_150 = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
COCO_STUFF_171 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff",
    "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road",
    "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other",
    "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
]
CITYSCAPES_19 = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
VOC_21 = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
CONTEXT_59 = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
]
CAMVID_11 = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian", "bicyclist",
]
assert (len(ADE20K_150), len(COCO_STUFF_171), len(CITYSCAPES_19), len(VOC_21), len(CONTEXT_59), len(CAMVID_11)) == (
    150, 171, 19, 21, 59, 11)
assert len(IMAGENET_CLASSNAMES) == 1000 and len(OPENAI_IMAGENET_TEMPLATES) == 80

LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
         "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris "
         "nisi ut aliquip ex ea commodo consequat. ")

HANDWRITTEN = [
    # empty / whitespace
    "", " ", "  ", "\t", "\n", "\r\n", " \t\n\r\x0b\x0c ", "\u3000", "\xa0", "\u2028", "\u2029", "\x85",
    "\u1680", "\u2000\u2001\u200a", "\u202f\u205f", "\x1c\x1d\x1e\x1f", "a\x1cb", "\u180e", "\u200b",
    # sentences, punctuation, digits
    "a photo of a cat.", "A PHOTO OF A DOG!", "What's that? It's a bird... or a plane!!!",
    "I'm sure they'll say we've done it, and you'd agree they're right; don't you?",
    "I'M SURE THEY'LL SAY WE'VE DONE IT", "'s 't 're 've 'm 'll 'd", "''s", "'''", "'S", "'ſ", "'ſt",
    "rock'n'roll", "o'clock", "isn't", "students' books", "\u2018quoted\u2019 and \u201cdouble\u201d",
    "\u201ehello\u201f \u201bodd\u201a \u02bcokina", "12345", "3.14159", "1,000,000", "-42", "+1 (555) 010-9999",
    "2023-10-01T12:34:56Z", "50%", "$100", "€200", "£3", "¥4", "#hashtag", "@mention", "e-mail@example.com",
    "https://example.com/path?query=1&x=2#frag", "C:\\Users\\name", "a_b_c", "snake_case_name", "CamelCaseName",
    "x^2 + y^2 = z^2", "<>", "<<>>", "()[]{}", "!!!???", "...", "—–-", "~`|\\/", "{}", "a/b", "a\\b",
    "==>", "<--", "¡Hola!", "¿Qué?", "«guillemets»", "‹single›",
    # mixed case, German, Turkish, Greek
    "MiXeD CaSe TeXt", "Straße", "STRASSE", "ẞ", "groß", "İstanbul", "ISTANBUL", "ıi", "İ", "i̇", "Iİıi",
    "ΟΔΥΣΣΕΥΣ", "ΣΑΣ.", "Σ", "ΑΣ", "ΑΣ ", "ΑΣΑ", "Α'Σ", "ΑΣ'", "Α.Σ", "ΌΣΟΣ ΛΌΓΟΣ", "aΣ", "Σa", "ǅ", "ǈ",
    "ǋ", "Ǳ", "ǲ", "ǳ", "Ǆ", "ǆ", "Ĳ", "ĳ", "ŉ", "ﬀ", "ﬁ", "ﬂ", "ﬃ", "ﬄ", "ﬅ", "ﬆ", "ﬁnal ﬂow oﬃce",
    "Kelvin \u212a", "Ohm \u2126", "Angstrom \u212b", "\u1e9e", "Ꭰ", "ꭰ", "Ა", "ა", "Ǆemal", "ß",
    # accents, combining
    "café", "cafe\u0301", "naïve résumé", "Ångström", "crème brûlée", "piñata", "Zürich", "São Paulo",
    "e\u0301\u0301", "a\u0300\u0316", "a\u0316\u0300", "\u0301", "x\u0345y", "α\u0345", "\u0345", "ᾳ",
    "\u1100\u1161\u11a8", "\uac00\u11a8", "한국어", "\u0915\u093c", "क़",
    # scripts
    "猫", "一只猫的照片", "東京タワー", "ｳｰﾀﾝ", "ﾊﾞｶ", "ひらがな カタカナ", "中文 English 混合",
    "القط الأسود", "مرحبا بالعالم ١٢٣", "हिन्दी भाषा", "नमस्ते १२३", "ภาษาไทย", "עברית", "Ελληνικά",
    "Русский текст", "Українська мова", "ქართული", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "ꦗꦮ", "𓀀𓀁",
    "ＬＯＵＤ　ＮＯＩＳＥＳ", "１２３", "ＡＢＣａｂｃ", "！？", "￥￦", "Ｕﾀｰﾝ",
    # numbers of all kinds
    "²³¹", "½ ¼ ¾", "ⅫⅦ", "ⅻ", "①②③", "٠١٢٣", "۴۵۶", "१२३", "๑๒๓", "𝟘𝟙𝟚", "〇一二三", "𐄇𐄈",
    # emoji
    "😀", "😀😃😄", "I ❤️ NY", "❤", "👍🏽", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🇩🇪🇫🇷🇯🇵", "🇺🇸 flag",
    "🏴\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f", "1️⃣ #️⃣", "🐱 cat 🐶 dog", "a😀b",
    # HTML entities
    "&amp;", "&lt;", "&gt;", "&nbsp;", "&#39;", "&#x27;", "&amp;amp;", "&amp;amp;amp;", "&amp;lt;",
    "fish &amp; chips", "fish & chips", "AT&T", "Q&A", "&AMP;", "&EACUTE;", "P&EACUTE;REZ", "&eacute;",
    "BUNDESSTRA&SZLIG;E", "&ntilde; &Ntilde; &NTILDE; &nTILDE;", "&notin;", "&notit;", "&not", "&notx",
    "this&not that", "&amp", "&ampx", "&#128512;", "&#x1F600;", "&#X1f600;", "&#0;", "&#13;", "&#128;",
    "&#x80;", "&#150;", "&#x9F;", "&#1;", "&#11;", "&#127;", "&#xD800;", "&#x110000;", "&#99999999999999;",
    "&#xFFFE;", "&#65;&#66;&#67;", "&#65", "&#x41", "&#", "&#x", "&#xZ;", "&#abc;", "&#12a;", "&#x12g;",
    "&;", "& ;", "&&amp;", "&#38;amp;", "&#38;#38;", "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> &amp; &lt;",
    "&lt;start_of_text&gt;", "&Jscr;ohn &HilbertSpace;ancock", "&checkmark;", "&AElig;", "&aelig;",
    "&AELIG;", "&ShortRightArrow;", "&NotNestedGreaterGreater;", "&nGt;", "&acE;", "&fjlig;",
    "&amp;nbsp;", "&ampnbsp;", "&nbsp", "&copy2023", "&copy;2023", "&reg", "&frac12;", "&FRAC12;", "&Dagger;",
    "&abcdefghijklmnopqrstuvwxyzabcdefgh;", "&" + "a" * 40 + ";", "&#" + "1" * 30 + ";",
    "&x\u00e9;", "&am\u00e9p;", "&a\u212amp;", "&amp\u037e", "line1 &amp;\nline2 &lt; <\nline3 &amp;",
    "line1 <\nline2 &amp;", "&amp;\r\n&amp;", "a&amp;b\n<c>&amp;d", "&lt;\n&gt;",
    "<b> &amp;amp;amp;", "&amp;amp;amp;amp;", "x\n<\n&amp;amp;amp;amp;", "&amp;amp;amp;amp;\n<",
    "&EACUTE; <", "&EACUTE;\n<", "<\n&EACUTE;", "&amp;EACUTE;", "&amp;amp;EACUTE;", "&#x3C;&amp;amp;amp;",
    "&lt;&amp;amp;amp;", "a\rb<\nc &amp;amp;amp;",
    # control characters, escapes
    "\x00", "a\x00b", "a\x01b\x02c", "bell\x07", "back\x08space", "tab\tseparated\tvalues", "new\nline",
    "carriage\rreturn", "crlf\r\nline", "form\x0cfeed", "vertical\x0btab", "del\x7f", "esc\x1b",
    "\x1b[31mred\x1b[0m", "\x1b[1;32mbold green\x1b[m", "\x1b[\u0661m", "\x1b[12", "\x1b[;;;Z", "\x1b[3",
    "\x1b]0;title\x07", "zero\u200bwidth", "zw\u200cnj\u200dj", "\u200e\u200f\u202a\u202e", "\u2066\u2069",
    "\ufeffBOM", "\u206a\u206b\u206f", "\ufff9\ufffa\ufffb\ufffc\ufffd", "\U0001d173\U0001d17a", "\ue000",
    "\U000f0000", "\uffff", "\ufffe", "\U0010ffff", "\ufdd0",
    # special tokens in text
    "<start_of_text>", "<end_of_text>", "<start_of_text>a photo<end_of_text>", "<START_OF_TEXT>",
    "<Start_Of_Text>", "<ſtart_of_text>", "<start_of_text", "start_of_text>", "<<start_of_text>>",
    "!<start_of_text>", "a<end_of_text>b", "<|startoftext|>", "<|endoftext|>", "<start_of_text><end_of_text>",
    "&lt;end_of_text&gt;", "<end_of_text>\n&lt;end_of_text&gt;",
    # newer Unicode (regex module vs CPython vs utf8proc differences)
    "\U00010d40\U00010d41", "\U00010d4a\U00010d4b", "\U0001e4f0\U0001e4f1", "\x1b[\U0001e4f1m",
    "\U00011f50", "a\u0301\U00011f41\u0300", "a\U00010efd\u0301", "b\u0301\U0001e08f\u0316",
    "\ua7cb\ua7cc", "\u088f", "\U000105c0\U000105c1", "\U00016100", "\U0001ccf0",
    "\U00013460\U00013461", "\U0001f979\U0001fae8", "\U0001fa89",
    # code, misc
    "def f(x): return x**2", "SELECT * FROM t WHERE a = 'b';", "#include <stdio.h>", "a <= b && c >= d",
    "{\"key\": [1, 2, 3]}", "1st 2nd 3rd 4th", "H2O", "CO₂", "x²", "A4 paper", "4K TV", "R2-D2", "C-3PO",
    "3D", "iPhone 15 Pro Max", "COVID-19", "U.S.A.", "e.g.", "i.e.,", "Mr. Smith's", "St. Louis",
]

# mojibake: ftfy's fix_encoding repairs these; the Swift port does not (out of scope),
# so they end up in "excluded_mojibake", documenting the deviation
MOJIBAKE = ["Ã©", "cafÃ©", "schÃ¶n", "âœ” No problems", "voilÃ le travail", "Ã¼ber", "â€œquotedâ€\x9d",
            "&macr;\\_(ã\x83\x84)_/&macr;", "ÐŸÑ€Ð¸Ð²ÐµÑ‚"]

# templates applied to a few tricky names as well
TRICKY_NAMES = ["İstanbul tram", "crème brûlée", "ﬁsh & chips", "ＴＶ monitor"]


def long_strings():
    out = []
    out.append(LOREM * 3)                        # > 77 tokens
    out.append(LOREM * 12)                       # > 1,000 chars
    out.append("a photo of a " + "very " * 100 + "big cat")
    out.append("word " * 300)                    # 1,500 chars
    out.append("x" * 1200)                       # one long word
    out.append("ab" * 700)
    out.append("supercalifragilisticexpialidocious" * 40)
    out.append("1234567890" * 120)               # digits: one token each
    out.append("!?" * 600)
    out.append("猫" * 500)
    out.append("😀" * 300)
    out.append("é" * 400)
    out.append(" ".join(IMAGENET_CLASSNAMES[:200]))
    out.append("&amp;" * 250)
    out.append("\n".join(["line &amp; %d" % i for i in range(60)] + ["<"] + ["after &amp; %d" % i for i in range(20)]))
    out.append(("Σ" * 3 + " ") * 100)
    out.append("<start_of_text>" * 80)
    out.append("a" * 74)
    out.append(" ".join(["a"] * 75))             # exactly 75 tokens -> 77 with sot/eot
    out.append(" ".join(["a"] * 76))             # 78 -> truncated
    out.append(" ".join(["cat"] * 200))
    return out


BLOCKS = [
    (0x0000, 0x001F), (0x0020, 0x007E), (0x007F, 0x009F), (0x00A0, 0x024F), (0x0250, 0x036F), (0x0370, 0x03FF),
    (0x0400, 0x052F), (0x0530, 0x058F), (0x0590, 0x06FF), (0x0700, 0x08FF), (0x0900, 0x0DFF), (0x0E00, 0x0FFF),
    (0x1000, 0x10FF), (0x1100, 0x11FF), (0x1200, 0x167F), (0x1680, 0x19FF), (0x1A00, 0x1CFF), (0x1D00, 0x1DFF),
    (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x20CF), (0x20D0, 0x20FF), (0x2100, 0x218F), (0x2190, 0x23FF),
    (0x2400, 0x24FF), (0x2500, 0x27BF), (0x27C0, 0x2BFF), (0x2C00, 0x2E7F), (0x2E80, 0x2FFF), (0x3000, 0x30FF),
    (0x3100, 0x33FF), (0x3400, 0x4DBF), (0x4DC0, 0x4DFF), (0x4E00, 0x9FFF), (0xA000, 0xA4CF), (0xA4D0, 0xA7FF),
    (0xA800, 0xABFF), (0xAC00, 0xD7AF), (0xD7B0, 0xD7FF), (0xE000, 0xF8FF), (0xF900, 0xFAFF), (0xFB00, 0xFDFF),
    (0xFE00, 0xFE6F), (0xFE70, 0xFEFF), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF), (0x10000, 0x107FF),
    (0x10800, 0x10FFF), (0x11000, 0x11FFF), (0x12000, 0x1342F), (0x13430, 0x1467F), (0x16800, 0x16FFF),
    (0x17000, 0x18DFF), (0x1B000, 0x1BCAF), (0x1CC00, 0x1D24F), (0x1D400, 0x1D7FF), (0x1E000, 0x1E8DF),
    (0x1E900, 0x1EFFF), (0x1F000, 0x1F2FF), (0x1F300, 0x1F6FF), (0x1F700, 0x1FBFF), (0x20000, 0x2A6DF),
    (0x2A700, 0x2FA1F), (0x30000, 0x323AF), (0x323B0, 0x3FFFF), (0x50000, 0x5FFFF), (0xE0000, 0xE01EF),
    (0xF0000, 0xFFFFF), (0x100000, 0x10FFFF),
]


def random_strings(rng: random.Random, count: int):
    out = []
    for n in range(count):
        k = rng.randint(1, 4)
        blocks = [rng.choice(BLOCKS) for _ in range(k)]
        length = rng.randint(1, 40)
        chars = []
        for _ in range(length):
            r = rng.random()
            if r < 0.12:
                chars.append(" ")
            elif r < 0.2:
                chars.append(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'&;<#."))
            else:
                lo, hi = rng.choice(blocks)
                cp = rng.randint(lo, hi)
                if 0xD800 <= cp <= 0xDFFF:
                    cp = 0xFFFD
                chars.append(chr(cp))
        out.append("".join(chars))
    return out


def reference_ids(text: str) -> list[int]:
    row = open_clip.tokenize([text])[0].tolist()
    last = max(i for i, v in enumerate(row) if v == EOT)
    ids = row[:last + 1]
    return ids


def main() -> None:
    if (open_clip.__version__, ftfy.__version__) != ("3.3.0", "6.3.1"):
        sys.exit(f"need open_clip_torch==3.3.0 and ftfy==6.3.1, found {open_clip.__version__} / {ftfy.__version__}")
    rng = random.Random(20240611)
    tok = SimpleTokenizer()

    texts: list[str] = []
    for names in (ADE20K_150, COCO_STUFF_171, CITYSCAPES_19, VOC_21, CONTEXT_59, CAMVID_11, IMAGENET_CLASSNAMES):
        texts += names
    for t in OPENAI_IMAGENET_TEMPLATES:
        texts += [t(c) for c in CAMVID_11]
        texts += [t(c) for c in TRICKY_NAMES]
    texts += HANDWRITTEN
    texts += MOJIBAKE
    texts += long_strings()
    # a few ImageNet names in templates with changed case / entities
    for c in rng.sample(IMAGENET_CLASSNAMES, 60):
        t = rng.choice(OPENAI_IMAGENET_TEMPLATES)
        texts.append(t(c).upper())
        texts.append(t(c).replace(" ", "\u00a0").replace("'", "\u2019"))
    texts += random_strings(rng, 600)

    items, excluded = [], []
    seen = set()
    for text in texts:
        if ("dup", text) in seen:
            continue
        seen.add(("dup", text))
        if ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False):
            excluded.append(text)
            continue
        ids = reference_ids(text)
        full = [tok.sot_token_id] + tok.encode(text) + [tok.eot_token_id]
        if len(full) <= 77:
            assert ids == full, (text, ids, full)
        else:
            assert ids == full[:76] + [EOT], text
        items.append({"text": text, "ids": ids})

    # ---------------- Hugging Face files + transformers check -------------
    hf_files, hf_check = hf_reference(tok, items)

    doc = {
        "generator": GENERATOR,
        "open_clip": open_clip.__version__,
        "ftfy": ftfy.__version__,
        "regex": regex.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "context_length": 77,
        "items": items,
        "hf_files": hf_files,
        "hf_check": hf_check,
        "excluded_mojibake": excluded,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    size = os.path.getsize(OUT)
    truncated = sum(1 for it in items if len(it["ids"]) == 77)
    print(f"{len(items)} items ({truncated} at the 77-token limit), {len(excluded)} excluded for mojibake "
          f"repair, {size} bytes -> {os.path.relpath(OUT, ROOT)}")
    print(f"HF check: {hf_check['compared']} compared, {hf_check['mismatches']} differ from open_clip "
          f"{hf_check['mismatches_by_kind']}; plain ASCII: {hf_check['plain_ascii_mismatches']} of "
          f"{hf_check['plain_ascii_compared']} differ")
    for ex in hf_check["examples"]:
        print(f"  HF differs ({ex['kind']}):", repr(ex["text"])[:70])


def hf_reference(tok: SimpleTokenizer, items):
    from transformers import CLIPTokenizer

    enc = dict(tok.encoder)
    enc["<|startoftext|>"] = enc.pop("<start_of_text>")
    enc["<|endoftext|>"] = enc.pop("<end_of_text>")
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    built = CLIPTokenizer(vocab=enc, merges=[tuple(m) for m in merges])
    with tempfile.TemporaryDirectory() as d:
        built.backend_tokenizer.model.save(d)
        files = {}
        for name, key in (("vocab.json", "vocab_json"), ("merges.txt", "merges_txt")):
            data = open(os.path.join(d, name), "rb").read()
            files[key] = {"bytes": len(data), "crc32": zlib.crc32(data)}
        hf = CLIPTokenizer(vocab=os.path.join(d, "vocab.json"), merges=os.path.join(d, "merges.txt"))
        compared, mismatches, plain, plain_bad = 0, 0, 0, 0
        kinds: dict[str, int] = {}
        examples = []
        for it in items:
            text = it["text"]
            hf_ids = hf(text, truncation=True, max_length=77)["input_ids"]
            compared += 1
            # "plain": printable ASCII without '&' and '<' (class names, prompts)
            is_plain = text.isascii() and "&" not in text and "<" not in text and text.isprintable()
            plain += is_plain
            if hf_ids != it["ids"]:
                mismatches += 1
                plain_bad += is_plain
                kind = ("plain" if is_plain else "special-token" if "_of_text>" in text else
                        "non-ascii" if not text.isascii() else "ascii-with-&" if "&" in text else
                        "ascii-control-or-<")
                kinds[kind] = kinds.get(kind, 0) + 1
                if sum(1 for e in examples if e["kind"] == kind) < 8:
                    examples.append({"kind": kind, "text": text, "open_clip": it["ids"], "hf": hf_ids})
    return files, {"compared": compared, "mismatches": mismatches, "plain_ascii_compared": plain,
                   "plain_ascii_mismatches": plain_bad, "mismatches_by_kind": kinds, "examples": examples}


def stress(path: str, count: int, seed: int) -> None:
    """Write `count` random strings (mostly tricky fragments) with open_clip's ids to
    `path`, for the optional extended test: ZEROSEG_TOKENIZER_STRESS=path swift test ..."""
    rng = random.Random(seed)
    fragments = ["&amp;", "&lt;", "&gt;", "<", ">", "\n", "\r", "\r\n", "&#", "&#x", "x", "41", "65", ";", "&",
                 "amp", "lt", "EACUTE", "notin", "not", "Σ", "σ", "\u0345", "'s", "'", "S", "ſ", "<start_of_text>",
                 "<end_of_text>", "\x1b[", "1", "m", "\u2028", "\x85", " ", "\t", "ﬁ", "Ａ", "ｱ", "İ", "e\u0301",
                 "\u0301", "\u0316", "\U00010efd", "\U00011f41", "\u1100", "\u1161", "\u11a8", "\uac00", "\x00",
                 "\x80", "\x9f", "\u201c", "\u2019", "\u02bc", "\ufeff", "\u3000", "\xa0", "😀", "\u200d", "👍",
                 "\U0001f3fd", "\U000e0067", "١", "\U0001e4f1", "\U00010d40", "Ⅻ", "²", "猫", "a", "B", ".", "!"]
    items, excluded = [], 0
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.7:
                parts.append(rng.choice(fragments))
            else:
                lo, hi = rng.choice(BLOCKS)
                cp = rng.randint(lo, hi)
                parts.append(chr(0xFFFD if 0xD800 <= cp <= 0xDFFF else cp))
        text = "".join(parts)
        if ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False):
            excluded += 1
            continue
        items.append({"text": text, "ids": reference_ids(text)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"generator": GENERATOR + " --stress", "open_clip": open_clip.__version__, "ftfy": ftfy.__version__,
                   "context_length": 77, "items": items}, f, ensure_ascii=False)
    print(f"{len(items)} stress items ({excluded} excluded for mojibake repair) -> {path}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--stress":
        # --stress PATH [COUNT] [SEED]
        stress(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 20000,
               int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    else:
        main()
