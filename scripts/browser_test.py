#!/usr/bin/env python3
"""Headless-browser test of the page `zeroseg serve` serves at `/`.

Drives Debian's Chromium through selenium against a running server (scripts/browser-test.sh
starts one): segments a picture, checks the overlay, legend, hover read-out, class toggles and
downloads, takes a screenshot, searches the index when the server has one, and checks that a
server error reaches the error line. Every wait is bounded by --timeout (seconds, the whole run).
Exits 0 after the last check; on the first failure prints one line `browser test: FAIL: why` and
exits 1.
"""
import argparse
import base64
import json
import os
import re
import struct
import sys
import time
import zlib

REQUIRED_IDS = [
    "image", "classes", "background", "run", "overlay", "legend", "readout", "method", "refine",
    "mode", "threshold", "download-labels", "download-json", "error", "busy", "token",
    "tab-segment", "tab-search", "search-text", "search-image", "search-regions", "search-run", "hits",
]
METHODS = ["naclip", "sclip", "clearclip", "maskclip", "vanilla"]


class Failure(Exception):
    pass


def exif_orientation(app1):
    """The EXIF orientation (1-8) in an APP1 segment's body, 1 when none."""
    if app1[:6] != b"Exif\0\0":
        return 1
    tiff = app1[6:]
    end = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if not end or len(tiff) < 8:
        return 1
    ifd = struct.unpack(end + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    for k in range(struct.unpack(end + "H", tiff[ifd:ifd + 2])[0]):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            break
        if struct.unpack(end + "H", tiff[e:e + 2])[0] == 0x0112:
            return struct.unpack(end + "H", tiff[e + 8:e + 10])[0]
    return 1


def image_size(path):
    """(width, height) of a PNG or baseline/progressive JPEG as shown upright (a JPEG's EXIF
    orientation 5-8 swaps them, as the server and the browser turn the picture)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return struct.unpack(">II", data[16:24])
    if data[:2] != b"\xff\xd8":
        raise Failure(f"{path} is neither PNG nor JPEG")
    i, orientation = 2, 1
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xE1 and orientation == 1:
            orientation = exif_orientation(data[i + 4:i + 2 + length])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (h, w) if orientation >= 5 else (w, h)
        i += 2 + length
    raise Failure(f"{path}: no JPEG frame header")


def decode_png(data, what):
    """(width, height, samples per pixel, rows) of a non-interlaced 8-bit PNG; rows are bytes of
    samples (the palette index for paletted files)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failure(f"{what} is not a PNG")
    i, idat, ihdr = 8, b"", None
    while i < len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        i += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or interlace:
        raise Failure(f"{what} has bit depth {depth}, interlace {interlace} (expected 8, 0)")
    bpp = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    raw, stride = zlib.decompress(idat), w * bpp
    rows, prev, p = [], bytearray(stride), 0
    for _ in range(h):
        ft, line = raw[p], bytearray(raw[p + 1:p + 1 + stride])
        p += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ft == 1:
                line[x] = (line[x] + a) & 255
            elif ft == 2:
                line[x] = (line[x] + b) & 255
            elif ft == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ft == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pr) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def mean_abs_difference(a, b, width, height):
    """Mean |a - b| over the RGB samples of the top-left width x height pixels of two decoded
    PNGs (w, h, samples per pixel, rows), and the fraction of pixels differing by more than 24
    in some channel."""
    (_, _, ca, ra), (_, _, cb, rb) = a, b
    total, far = 0, 0
    for y in range(height):
        la, lb = ra[y], rb[y]
        for x in range(width):
            d = max(abs(la[x * ca + k] - lb[x * cb + k]) for k in range(3))
            total += sum(abs(la[x * ca + k] - lb[x * cb + k]) for k in range(3))
            far += d > 24
    return total / (3 * width * height), far / (width * height)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--image", default="examples/chelsea.jpg")
    ap.add_argument("--classes", default="cat,grass|lawn,wall,floor")
    ap.add_argument("--search-text", default=None, help="default: the first class name")
    ap.add_argument("--screenshot", default=None, help="PNG of the page after segmenting")
    ap.add_argument("--search-screenshot", default=None, help="PNG of the page after searching")
    ap.add_argument("--token", default="", help="the server's --token: typed into #token")
    ap.add_argument("--timeout", type=float, default=120, help="seconds for the whole run")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = ap.parse_args()
    started = time.monotonic()
    try:
        checks = run(args, started)
    except Failure as e:
        print(f"browser test: FAIL: {e}", file=sys.stderr)
        return 1
    print(f"browser test: {time.monotonic() - started:.1f} s")
    print(f"browser test: {checks} passed, 0 failed")
    return 0


def run(args, started):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    deadline = started + args.timeout
    checks = 0

    def ok(what):
        nonlocal checks
        checks += 1
        print(f"browser test: ok: {what}", flush=True)

    def wait(what, predicate, limit=None):
        """Polls predicate() until truthy (returned) or the deadline (Failure naming `what`)."""
        end = deadline if limit is None else min(deadline, time.monotonic() + limit)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= end:
                raise Failure(f"timed out waiting for {what}")
            time.sleep(0.1)

    image = os.path.abspath(args.image)
    if not os.path.isfile(image):
        raise Failure(f"no image {args.image}")
    pic_w, pic_h = image_size(image)
    names = [c.split("|")[0].strip() for c in args.classes.split(",") if c.strip()]

    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1000", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
    except WebDriverException as e:
        raise Failure("cannot start chromium: " + (e.msg or str(e)).splitlines()[0])
    try:
        driver.set_page_load_timeout(max(5, deadline - time.monotonic()))
        driver.set_script_timeout(30)
        steps(driver, args, ok, wait, image, pic_w, pic_h, names, By, ActionChains, Keys)
        return checks
    except WebDriverException as e:
        raise Failure("webdriver: " + (e.msg or str(e)).splitlines()[0])
    finally:
        driver.quit()


def steps(driver, args, ok, wait, image, pic_w, pic_h, names, By, ActionChains, Keys):
    el = lambda i: driver.find_element(By.ID, i)
    js = driver.execute_script
    error_text = lambda: el("error").text.strip()

    # ---- the page and /v1/info
    driver.get(args.url.rstrip("/") + "/")
    missing = [i for i in REQUIRED_IDS if not driver.find_elements(By.ID, i)]
    if missing:
        raise Failure("page lacks ids: " + ", ".join(missing))
    methods = js("return [...document.querySelectorAll('#method option')].map(o => o.value)")
    if methods != METHODS:
        raise Failure(f"#method offers {methods}, not {METHODS}")
    if js("return document.getElementById('options').open"):
        raise Failure("the options section is open at start (should be collapsed)")
    ok("page has every control id; options collapsed")
    if args.token:
        # a server with a token: /v1/info fails until the token is typed (then the page asks again)
        wait("the token request", lambda: "token" in error_text(), 30)
        el("token").send_keys(args.token + Keys.TAB)
        wait("/v1/info with the token", lambda: not error_text() and "token required" in el("info").text, 30)
        ok("token: asked for, typed, accepted")
    wait("/v1/info (#info)", lambda: el("info").text.strip() not in ("", "connecting…"), 30)
    if error_text():
        raise Failure("error line after loading: " + error_text())
    has_index = el("tab-search").is_enabled()
    ok(f"info loaded: {el('info').text.strip()}")

    # ---- segment
    el("image").send_keys(image)
    el("classes").clear()
    el("classes").send_keys(args.classes)
    t0 = time.monotonic()
    el("run").click()
    wait("the overlay or an error",
         lambda: error_text() or js("return document.getElementById('overlay').naturalWidth > 0"))
    if error_text():
        raise Failure("segment: " + error_text())
    seconds = time.monotonic() - t0
    nw, nh = js("const o = document.getElementById('overlay'); return [o.naturalWidth, o.naturalHeight]")
    if (nw, nh) != (pic_w, pic_h):
        raise Failure(f"#overlay is {nw}x{nh}, the picture {pic_w}x{pic_h}")
    wait("the busy indicator to go", lambda: not el("busy").is_displayed(), 10)
    ok(f"overlay {nw}x{nh} in {seconds:.1f} s")

    legend = js("return [...document.querySelectorAll('#legend > li')].map(li => ({"
                "name: li.dataset.name, area: Number(li.dataset.area), text: li.textContent,"
                "boxes: li.querySelectorAll('input[type=checkbox]').length}))")
    got = [e["name"] for e in legend]
    if got != names:
        raise Failure(f"#legend lists {got}, expected {names}")
    for e in legend:
        if e["boxes"] != 1 or e["name"] not in e["text"]:
            raise Failure(f"legend entry {e['name']!r} lacks its checkbox or its name")
    ok("legend: " + ", ".join(f"{e['name']} {100 * e['area']:.1f}%" for e in legend))

    # ---- downloads: the JSON record without PNGs, the label PNG (decoded here for the hover check)
    fetch = ("const done = arguments[arguments.length - 1];"
             "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
             " let s = ''; const u = new Uint8Array(b);"
             " for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192));"
             " done(btoa(s)); }).catch(e => done('ERR ' + e));")
    links = {}
    for i, suffix in (("download-labels", ".labels.png"), ("download-json", ".json")):
        href, name = el(i).get_attribute("href"), el(i).get_attribute("download")
        if not href or not href.startswith("blob:") or not (name or "").endswith(suffix):
            raise Failure(f"#{i} is href={href!r} download={name!r}")
        body = driver.execute_async_script(fetch, href)
        if body.startswith("ERR"):
            raise Failure(f"#{i}: {body}")
        links[i] = base64.b64decode(body)
    record = json.loads(links["download-json"])
    if "png" in record:
        raise Failure("the JSON download still has the base64 PNGs")
    if (record.get("width"), record.get("height")) != (pic_w, pic_h) or \
            [c["name"] for c in record.get("classes", [])] != names:
        raise Failure("the JSON download does not describe this run")
    lw, lh, _, label_rows = decode_png(links["download-labels"], "the label download")
    if (lw, lh) != (pic_w, pic_h):
        raise Failure(f"the label PNG is {lw}x{lh}, the picture {pic_w}x{pic_h}")
    by_value = {c["index"]: c["name"] for c in record["classes"]}
    ok(f"downloads: {el('download-labels').get_attribute('download')}, "
       f"{el('download-json').get_attribute('download')}")

    # ---- the overlay drawn here matches the picture part of the server's (left, same size):
    # the same blend, so only the JPEG decoders' differences remain
    src = el("overlay").get_attribute("src") or ""
    if not src.startswith("data:image/png;base64,"):
        raise Failure("#overlay src is not a PNG data URL")
    client = decode_png(base64.b64decode(src.split(",", 1)[1]), "#overlay")
    server_href = el("download-overlay").get_attribute("href")
    body = driver.execute_async_script(fetch, server_href)
    if body.startswith("ERR"):
        raise Failure(f"#download-overlay: {body}")
    server = decode_png(base64.b64decode(body), "the server's overlay")
    if server[0] < pic_w or server[1] < pic_h:
        raise Failure(f"the server's overlay is {server[0]}x{server[1]}, smaller than the picture")
    mean, far = mean_abs_difference(client, server, pic_w, pic_h)
    if mean > 3 or far > 0.01:
        raise Failure(f"#overlay differs from the server's overlay: mean {mean:.2f} levels, "
                      f"{100 * far:.1f}% of pixels by more than 24")
    ok(f"overlay matches the server's (mean difference {mean:.2f} levels)")

    # ---- hover: the read-out names the class of the pixel under the mouse (checked against the
    # downloaded label PNG) and its score
    overlay = el("overlay")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", overlay)
    cw, ch = js("const o = arguments[0]; return [o.clientWidth, o.clientHeight]", overlay)
    seen = []
    for fx, fy in ((0.3, 0.6), (0.7, 0.35), (0.5, 0.9), (0.1, 0.1)):
        dx, dy = int(cw * fx - cw / 2), int(ch * fy - ch / 2)
        ActionChains(driver).move_to_element_with_offset(overlay, dx, dy).perform()
        text = wait("the hover read-out", lambda: el("readout").text.strip(), 10)
        m = re.fullmatch(r"(.+) (\d\.\d\d)", text)
        if text != "background" and not (m and m.group(1) in names):
            raise Failure(f"#readout reads {text!r} (expected a class and score, or background)")
        where = re.fullmatch(r"pixel (\d+), (\d+)", el("readout").get_attribute("title") or "")
        if not where:
            raise Failure("#readout has no pixel position in its title")
        x, y = int(where.group(1)), int(where.group(2))
        ex, ey = int(cw * fx) * pic_w / cw, int(ch * fy) * pic_h / ch
        if abs(x - ex) > 1.5 * pic_w / cw + 1 or abs(y - ey) > 1.5 * pic_h / ch + 1:
            raise Failure(f"mouse at ({ex:.0f}, {ey:.0f}) of the picture read as pixel ({x}, {y})")
        value = label_rows[y][x]
        expected = by_value.get(value, "background")
        if (m.group(1) if m else "background") != expected:
            raise Failure(f"#readout reads {text!r} at pixel ({x}, {y}), the label PNG says {expected}")
        seen.append(text)
    ok("hover read-out: " + "; ".join(seen))

    # ---- toggles: unchecking a class changes the overlay; checking it again restores it
    shown = [e for e in legend if e["area"] > 0]
    if not shown:
        raise Failure("no class has any pixels: nothing to toggle")
    target = max(shown, key=lambda e: e["area"])
    position = got.index(target["name"])
    box = driver.find_elements(By.CSS_SELECTOR, "#legend > li input[type=checkbox]")[position]
    before = overlay.get_attribute("src")
    box.click()
    wait("the overlay to change after unchecking " + target["name"],
         lambda: overlay.get_attribute("src") != before, 20)
    off = overlay.get_attribute("src")
    box.click()
    wait("the overlay to come back after checking " + target["name"] + " again",
         lambda: overlay.get_attribute("src") == before, 20)
    if off == before:
        raise Failure("toggling changed nothing")
    ok(f"toggle {target['name']}: overlay changes and comes back")

    if args.screenshot:
        js("window.scrollTo(0, 0)")
        # the mouse on the picture, so that the read-out shows in the picture
        ActionChains(driver).move_to_element_with_offset(overlay, 0, int(ch * 0.1)).perform()
        if not driver.save_screenshot(args.screenshot):
            raise Failure("cannot save " + args.screenshot)
        ok("screenshot " + args.screenshot)

    # ---- search
    if has_index:
        el("tab-search").click()
        wait("the search panel", lambda: el("search-text").is_displayed(), 5)
        el("search-text").send_keys(args.search_text or names[0])
        regions = el("search-regions").is_enabled()
        if regions and not el("search-regions").is_selected():
            el("search-regions").click()
        el("search-run").click()
        wait("search hits or an error",
             lambda: error_text() or js("return document.getElementById('hits').children.length > 0"))
        if error_text():
            raise Failure("search: " + error_text())
        wait("a thumbnail to load", lambda: js(
            "return document.querySelector('#hits .hit[data-loaded=true]') !== null"), 30)
        info = js("""
            const hits = [...document.querySelectorAll('#hits > .hit')];
            const c = document.querySelector('#hits .hit[data-loaded=true] canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let lo = 255, hi = 0;
            for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
            return {n: hits.length, regions: hits.filter(h => h.dataset.region === 'true').length,
                    caption: hits[0].querySelector('figcaption').textContent, w: c.width, spread: hi - lo};""")
        if info["spread"] == 0:
            raise Failure("the first loaded thumbnail is blank")
        if not info["caption"].startswith("#1 "):
            raise Failure(f"the first hit's caption is {info['caption']!r}")
        if regions and info["regions"] == 0:
            raise Failure("a search with regions returned no region hits")
        ok(f"search: {info['n']} hits, {info['regions']} regions, first: {info['caption']}")
        if args.search_screenshot:
            js("window.scrollTo(0, 0)")
            driver.save_screenshot(args.search_screenshot)
        el("tab-segment").click()
    else:
        note = el("search-note").text.strip()
        if not note:
            raise Failure("the search tab is disabled without a note")
        ok(f"no index: search tab disabled ({note})")

    # ---- a server error reaches the error line (a file that is not a picture)
    el("image").send_keys(os.path.abspath(__file__))
    el("run").click()
    message = wait("the error line", error_text)
    if "\n" in message:
        raise Failure("the error line has several lines")
    status = el("error").get_attribute("data-status") or ""
    if not re.fullmatch(r"4\d\d", status):
        raise Failure(f"the error line shows {message!r} with status {status!r}, not the server's 4xx")
    wait("the busy indicator to go", lambda: not el("busy").is_displayed(), 10)
    ok(f"server error shown: {status} {message}")

    # ---- no script errors in the console (failed requests are expected: the one above)
    problems = [e["message"] for e in driver.get_log("browser")
                if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]]
    if problems:
        raise Failure("console: " + problems[0].splitlines()[0])
    ok("no script errors")


if __name__ == "__main__":
    sys.exit(main())
