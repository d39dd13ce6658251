#!/usr/bin/env python3
"""Generate the Unicode / HTML tables used by ZeroSeg's CLIP tokenizer port.

Writes:
  Sources/ZeroSegText/HTMLEntities.swift   Python's html.entities.html5 table, plus
                                       ftfy 6.3.1's extra upper-case entities.
  Sources/ZeroSegText/UnicodeTables.swift  ftfy 6.3.1 character tables and the
                                       differences between utf8proc (which the
                                       Swift code uses) and the Unicode data the
                                       Python reference uses (CPython's
                                       unicodedata for ftfy / str.lower /
                                       str.split, the `regex` module for the
                                       pre-tokeniser pattern).

Every table is checked here against Python for all code points
0..0x10FFFF (surrogates excluded), with utf8proc called through ctypes, so the
Swift side computes exactly what open_clip computes.  The script stops with an
error if an assumption the Swift code relies on does not hold.

Usage (from the repository root, with open_clip_torch==3.3.0, ftfy==6.3.1 and
regex installed, and libutf8proc2 from Debian):

    python scripts/reference/gen_tokenizer_tables.py
"""
from __future__ import annotations

import ctypes
import html
import html.entities
import os
import random
import sys
import unicodedata

import ftfy
import ftfy.chardata as chardata
import ftfy.fixes
import regex

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(ROOT, "Sources", "ZeroSeg")
SCRIPT = "scripts/reference/gen_tokenizer_tables.py"

ALL = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]

# --------------------------------------------------------------------------
# utf8proc through ctypes (the same library the Swift target links)
# --------------------------------------------------------------------------
U = ctypes.CDLL("libutf8proc.so.2")
U.utf8proc_category.restype = ctypes.c_int
U.utf8proc_category.argtypes = [ctypes.c_int32]
U.utf8proc_tolower.restype = ctypes.c_int32
U.utf8proc_tolower.argtypes = [ctypes.c_int32]
U.utf8proc_unicode_version.restype = ctypes.c_char_p
U.utf8proc_version.restype = ctypes.c_char_p


class _Prop(ctypes.Structure):
    _fields_ = [
        ("category", ctypes.c_int16),
        ("combining_class", ctypes.c_int16),
        ("bidi_class", ctypes.c_int16),
        ("decomp_type", ctypes.c_int16),
    ]


U.utf8proc_get_property.restype = ctypes.POINTER(_Prop)
U.utf8proc_get_property.argtypes = [ctypes.c_int32]
U.utf8proc_NFC.restype = ctypes.c_void_p
U.utf8proc_NFC.argtypes = [ctypes.c_char_p]
LIBC = ctypes.CDLL(None)
LIBC.free.argtypes = [ctypes.c_void_p]

UTF8PROC_VERSION = U.utf8proc_version().decode()
UTF8PROC_UNICODE = U.utf8proc_unicode_version().decode()

# utf8proc_category_t
CAT_LU, CAT_LO, CAT_ND, CAT_NO = 1, 5, 9, 11


def u_nfc(s: str) -> str:
    p = U.utf8proc_NFC(s.encode("utf-8"))
    r = ctypes.string_at(p).decode("utf-8")
    LIBC.free(p)
    return r


def fail(msg: str) -> None:
    sys.exit(f"{SCRIPT}: assumption broken: {msg}")


def ranges(cps):
    out = []
    for cp in cps:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def swift_u32_array(name: str, values, doc: str, per_line: int = 8) -> str:
    lines = [f"    /// {doc}", f"    static let {name}: [UInt32] = ["]
    vals = [f"0x{v:05X}" for v in values]
    for i in range(0, len(vals), per_line):
        lines.append("        " + ", ".join(vals[i:i + per_line]) + ",")
    lines.append("    ]")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# 1. Pre-tokeniser classes: regex module, IGNORECASE, vs utf8proc categories
# --------------------------------------------------------------------------
RE_L = regex.compile(r"[\p{L}]", regex.IGNORECASE)
RE_N = regex.compile(r"[\p{N}]", regex.IGNORECASE)
RE_O = regex.compile(r"[^\s\p{L}\p{N}]", regex.IGNORECASE)
RE_S = regex.compile(r"\s", regex.IGNORECASE)

REGEX_WS = [cp for cp in ALL if RE_S.fullmatch(chr(cp))]
PY_WS = [cp for cp in ALL if chr(cp).isspace()]

# class codes used by the Swift scanner
C_NONE, C_LETTER, C_NUMBER, C_OTHER = 0, 1, 2, 3


def base_class(cp: int) -> int:
    cat = U.utf8proc_category(cp)
    if CAT_LU <= cat <= CAT_LO:
        return C_LETTER
    if CAT_ND <= cat <= CAT_NO:
        return C_NUMBER
    if cp in REGEX_WS_SET:
        return C_NONE
    return C_OTHER


REGEX_WS_SET = set(REGEX_WS)
class_overrides = []  # [lo, hi, class]
for cp in ALL:
    c = chr(cp)
    m = (bool(RE_L.fullmatch(c)), bool(RE_N.fullmatch(c)), bool(RE_O.fullmatch(c)))
    if sum(m) > 1:
        fail(f"U+{cp:04X} matches more than one pre-tokeniser class")
    want = C_LETTER if m[0] else C_NUMBER if m[1] else C_OTHER if m[2] else C_NONE
    if want == C_NONE and cp not in REGEX_WS_SET and cp != 0x345:
        # U+0345 is the one known oddity (see UnicodeTables.swift)
        fail(f"U+{cp:04X} matches no class and is not whitespace")
    if base_class(cp) != want:
        if class_overrides and class_overrides[-1][1] == cp - 1 and class_overrides[-1][2] == want:
            class_overrides[-1][1] = cp
        else:
            class_overrides.append([cp, cp, want])

# Literal characters of the pattern, matched case-insensitively.
literal_folds = {}
for ch in sorted(set("<start_of_text>end_of_text'sreveml d") - {" "}):
    m = [cp for cp in ALL if regex.fullmatch(regex.escape(ch), chr(cp), regex.IGNORECASE)]
    literal_folds[ch] = m
    extra = [cp for cp in m if cp not in (ord(ch), ord(ch.upper()))]
    if extra and not (ch == "s" and extra == [0x17F]):
        fail(f"unexpected case-insensitive match for {ch!r}: {extra}")

# --------------------------------------------------------------------------
# 2. str.lower: utf8proc_tolower + special cases + final sigma
# --------------------------------------------------------------------------
lower_diff = []
for cp in ALL:
    if cp == 0x3A3:
        continue
    py = chr(cp).lower()
    up = chr(U.utf8proc_tolower(cp))
    if py != up:
        lower_diff.append((cp, [ord(x) for x in py]))
if lower_diff != [(0x130, [0x69, 0x307])]:
    fail(f"str.lower differs from utf8proc_tolower in unexpected places: {lower_diff[:10]}")

# Final-sigma context (CPython handle_capital_sigma) needs the properties
# Cased and Case_Ignorable of CPython's Unicode database; derive them from
# str.lower's behaviour itself.
case_ignorable, cased = [], []
for cp in ALL:
    c = chr(cp)
    p1 = (c + "\u03a3").lower().endswith("\u03c2")         # !ign && cased
    p2 = ("A\u03a3" + c).lower()[1] == "\u03c2"            # ign || !cased
    q = ("A" + c + "\u03a3").lower().endswith("\u03c2")    # ign || cased
    ign = p2 and q and not p1
    if ign:
        case_ignorable.append(cp)
    elif p1:
        cased.append(cp)
IGN_SET, CASED_SET = set(case_ignorable), set(cased)


def sim_lower(s: str) -> str:
    out = []
    for i, c in enumerate(s):
        if c != "\u03a3":
            out.append(c.lower())
            continue
        j = i - 1
        while j >= 0 and ord(s[j]) in IGN_SET:
            j -= 1
        final = j >= 0 and ord(s[j]) in CASED_SET
        if final:
            j = i + 1
            while j < len(s) and ord(s[j]) in IGN_SET:
                j += 1
            final = j == len(s) or ord(s[j]) not in CASED_SET
        out.append("\u03c2" if final else "\u03c3")
    return "".join(out)


rng = random.Random(1234)
pool = [0x3A3, 0x3A3, 0x3A3, 0x41, 0x61, 0x20, 0x27, 0x2E, 0x300, 0x345, 0x2B0, 0x5D0, 0x391]
pool += rng.sample(ALL, 400) + case_ignorable[:200] + cased[:200]
for _ in range(40000):
    s = "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 8)))
    if sim_lower(s) != s.lower():
        fail(f"final sigma simulation differs for {s!r}")

# --------------------------------------------------------------------------
# 3. NFC: utf8proc vs CPython unicodedata
# --------------------------------------------------------------------------
nfc_inert = []
for cp in ALL:
    if cp == 0:
        continue  # the C string API cannot carry NUL; NUL is removed by ftfy anyway
    c = chr(cp)
    ccc_py = unicodedata.combining(c)
    ccc_u = U.utf8proc_get_property(cp).contents.combining_class
    nfc_py = unicodedata.normalize("NFC", c)
    nfc_u = u_nfc(c)
    if ccc_py != ccc_u or nfc_py != nfc_u:
        if unicodedata.category(c) == "Cn" and nfc_py == nfc_u == c and ccc_py == 0:
            nfc_inert.append(cp)   # unassigned for CPython: an inert starter
        else:
            fail(f"NFC data differ at U+{cp:04X} beyond unassigned code points")
# Random check of the splitting strategy used in Swift.
marks = [cp for cp in ALL if unicodedata.combining(chr(cp))][:300] + nfc_inert
bases = [0x41, 0x61, 0x65, 0x1100, 0x1161, 0x11A8, 0xAC00, 0x3B1, 0x915, 0x93C, 0x11F00]


def swift_like_nfc(s: str) -> str:
    out, seg = [], []
    for ch in s:
        if ord(ch) in NFC_INERT_SET:
            out.append(u_nfc("".join(seg)) if seg else "")
            out.append(ch)
            seg = []
        else:
            seg.append(ch)
    out.append(u_nfc("".join(seg)) if seg else "")
    return "".join(out)


NFC_INERT_SET = set(nfc_inert)
for _ in range(20000):
    s = "".join(chr(rng.choice(marks if rng.random() < 0.6 else bases)) for _ in range(rng.randint(1, 7)))
    if swift_like_nfc(s) != unicodedata.normalize("NFC", s):
        fail(f"NFC split strategy differs for {s!r}")

# --------------------------------------------------------------------------
# 4. \d of Python's re (remove_terminal_escapes): str.isdecimal vs utf8proc Nd
# --------------------------------------------------------------------------
decimal_diff = [cp for cp in ALL if chr(cp).isdecimal() != (U.utf8proc_category(cp) == CAT_ND)]
re_d = [cp for cp in ALL if __import__("re").fullmatch(r"\d", chr(cp))]
if re_d != [cp for cp in ALL if chr(cp).isdecimal()]:
    fail("re \\d is not str.isdecimal")
if any(chr(cp).isdecimal() for cp in decimal_diff):
    fail("utf8proc misses a decimal digit CPython has")

# --------------------------------------------------------------------------
# 5. ftfy 6.3.1 tables
# --------------------------------------------------------------------------
if ftfy.__version__ != "6.3.1":
    fail(f"ftfy {ftfy.__version__} installed, tables are for 6.3.1")
ligatures = sorted(chardata.LIGATURES.items())
width_map = sorted(chardata.WIDTH_MAP.items())
control_chars = sorted(chardata.CONTROL_CHARS)
c1_map = [(cp, ord(chr(cp).encode("latin-1").decode("sloppy-windows-1252"))) for cp in range(0x80, 0xA0)]
if {k: ord(v) for k, v in html._invalid_charrefs.items() if 0x80 <= k <= 0x9F} != dict(c1_map):
    fail("html._invalid_charrefs for U+0080..U+009F is not sloppy-windows-1252 (Swift shares the table)")
single_quotes = [cp for cp in ALL if chardata.SINGLE_QUOTE_RE.fullmatch(chr(cp))]
double_quotes = [cp for cp in ALL if chardata.DOUBLE_QUOTE_RE.fullmatch(chr(cp))]
if single_quotes != [0x2BC, 0x2018, 0x2019, 0x201A, 0x201B] or double_quotes != [0x201C, 0x201D, 0x201E, 0x201F]:
    fail("ftfy quote tables changed")
if PY_WS != sorted(set(REGEX_WS) | {0x1C, 0x1D, 0x1E, 0x1F}):
    fail("str.isspace is not regex \\s plus U+001C..U+001F")


def flat_map(items):
    flat = []
    for k, v in items:
        if isinstance(v, str):
            vs = [ord(x) for x in v]
        else:
            vs = v
        if len(vs) > 3:
            fail("mapping longer than 3")
        flat += [k, len(vs)] + vs + [0] * (3 - len(vs))
    return flat


# --------------------------------------------------------------------------
# Write UnicodeTables.swift
# --------------------------------------------------------------------------
ut = []
ut.append(f"""// GENERATED by {SCRIPT} -- do not edit by hand.
// Python {sys.version.split()[0]} (unicodedata {unicodedata.unidata_version}), regex {regex.__version__},
// ftfy {ftfy.__version__}, utf8proc {UTF8PROC_VERSION} (Unicode {UTF8PROC_UNICODE}).
// Every table was checked against Python for all code points 0...0x10FFFF.

/// Tables that make utf8proc-based code behave exactly like the Python
/// reference (open_clip 3.3.0 + ftfy 6.3.1 + regex) does.
enum UnicodeTables {{
    /// utf8proc's Unicode version these tables were generated against.
    static let utf8procUnicodeVersion = "{UTF8PROC_UNICODE}"
""")
ut.append(swift_u32_array(
    "regexClassOverrides", [x for r in class_overrides for x in r],
    "Pre-tokeniser class overrides (lo, hi, class) where the `regex` module's "
    "[\\p{L}] / [\\p{N}] / [^\\s\\p{L}\\p{N}] under IGNORECASE disagree with utf8proc "
    "categories. Class: 0 none, 1 letter, 2 number, 3 other. U+0345 matches no "
    "class (its case variants are letters), so the regex skips it.", per_line=9))
ut.append(swift_u32_array("regexWhitespace", REGEX_WS, "`\\s` of the `regex` module (Unicode)."))
ut.append(swift_u32_array("pythonWhitespace", PY_WS, "`str.isspace()` of CPython (used by str.split / str.strip)."))
ut.append(swift_u32_array(
    "caseIgnorableRanges", [x for r in ranges(case_ignorable) for x in r],
    "CPython Case_Ignorable (lo, hi) pairs, for str.lower's final sigma.", per_line=8))
ut.append(swift_u32_array(
    "casedRanges", [x for r in ranges(cased) for x in r],
    "CPython Cased (lo, hi) pairs minus Case_Ignorable ones, for str.lower's final sigma.", per_line=8))
ut.append(swift_u32_array(
    "nfcInert", nfc_inert,
    "Code points unassigned in CPython's Unicode database but combining for utf8proc: "
    "CPython's NFC treats them as inert starters, so NFC is applied to the pieces between them."))
ut.append(swift_u32_array(
    "notDecimal", decimal_diff,
    "Code points utf8proc calls Nd but CPython's str.isdecimal (re's \\d) does not."))
ut.append(swift_u32_array("ftfyLigatures", flat_map(ligatures),
                          "ftfy chardata.LIGATURES as (code point, count, c1, c2, c3).", per_line=10))
ut.append(swift_u32_array("ftfyWidthMap", flat_map(width_map),
                          "ftfy chardata.WIDTH_MAP as (code point, count, c1, c2, c3).", per_line=10))
ut.append(swift_u32_array("ftfyControlChars", control_chars,
                          "ftfy chardata.CONTROL_CHARS (removed by remove_control_chars)."))
ut.append(swift_u32_array("ftfyC1Map", [x for kv in c1_map for x in kv],
                          "fix_c1_controls: U+0080...U+009F -> sloppy-windows-1252 (from, to)."))
ut.append("}\n")
with open(os.path.join(OUT_DIR, "UnicodeTables.swift"), "w", encoding="utf-8") as f:
    f.write("\n\n".join(ut))

# --------------------------------------------------------------------------
# Write HTMLEntities.swift
# --------------------------------------------------------------------------
def entity_lines(items):
    out = []
    for name, value in items:
        if not all(ch.isascii() and (ch.isalnum() or ch == ";") for ch in name):
            fail(f"odd entity name {name!r}")
        out.append(name + " " + " ".join(f"{ord(ch):X}" for ch in value))
    return "\n".join(out)


html5_items = sorted(html.entities.html5.items())
ftfy_extra = sorted(
    (k[1:], v) for k, v in chardata.HTML_ENTITIES.items() if k[1:] not in html.entities.html5
)
for k, v in chardata.HTML_ENTITIES.items():
    if k[1:] in html.entities.html5 and html.entities.html5[k[1:]] != v:
        fail(f"ftfy entity {k} differs from html5")
    if not k.endswith(";"):
        fail(f"ftfy entity without semicolon {k}")

he = f'''// GENERATED by {SCRIPT} -- do not edit by hand.
// Python {sys.version.split()[0]} html.entities.html5 ({len(html5_items)} names) and the
// {len(ftfy_extra)} extra upper-case names of ftfy {ftfy.__version__} chardata.HTML_ENTITIES.

enum HTMLEntities {{
    /// "name value-hex..." per line; names include the trailing ';' where HTML5 has it.
    static let html5Source = """
{entity_lines(html5_items)}
"""

    /// ftfy's upper-case entity names (all end with ';') that are not HTML5 names.
    static let ftfyUpperSource = """
{entity_lines(ftfy_extra)}
"""
}}
'''
with open(os.path.join(OUT_DIR, "HTMLEntities.swift"), "w", encoding="utf-8") as f:
    f.write(he)

print(f"class overrides: {len(class_overrides)} ranges; case-ignorable {len(ranges(case_ignorable))} "
      f"ranges; cased {len(ranges(cased))} ranges; nfc inert {len(nfc_inert)}; "
      f"not-decimal {len(decimal_diff)}; html5 {len(html5_items)}; ftfy extra {len(ftfy_extra)}")
print("wrote Sources/ZeroSegText/UnicodeTables.swift and Sources/ZeroSegText/HTMLEntities.swift")
