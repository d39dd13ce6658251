// The page of `zeroseg serve`: segment a picture (overlay drawn here from the label and score
// PNGs the server returns) and search the server's index. Plain JS, no build step, no network
// but this server. Control ids are stable: tests and scripts use them (docs/serve.md).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "zeroseg.token";
  const ALPHA = 0.5; // as the server's overlay

  const state = {
    info: null,
    seg: null,        // the shown segmentation (see showSegmentation)
    segSeq: 0,        // the latest segment request; older answers are dropped
    searchSeq: 0,
    searchURLs: [],   // object URLs of the shown thumbnails
    downloadURLs: [],
    busy: 0,
  };

  // ---- requests ----------------------------------------------------------------------------

  function authHeaders() {
    const t = $("token").value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  // fetch with the token; a non-2xx answer throws its one-line `error` (status on the error).
  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {}, authHeaders());
    let resp;
    try {
      resp = await fetch(path, Object.assign({}, options, { headers }));
    } catch (e) {
      throw new Error("cannot reach the server (" + e.message + ")");
    }
    if (!resp.ok) {
      let msg = "HTTP " + resp.status + (resp.statusText ? " " + resp.statusText : "");
      try {
        const j = await resp.json();
        if (j && typeof j.error === "string") msg = j.error;
      } catch (_) { /* not JSON: keep the status line */ }
      const retry = resp.headers.get("Retry-After");
      if (resp.status === 503 && retry) msg += " (retry after " + retry + " s)";
      const err = new Error(msg);
      err.status = resp.status;
      throw err;
    }
    return resp;
  }

  // The error line; data-status holds the HTTP status when the message is the server's.
  function setError(msg, status) {
    $("error").textContent = msg || "";
    if (status) $("error").dataset.status = String(status); else delete $("error").dataset.status;
  }

  // Shows the busy indicator (and disables `button`) until the returned function is called.
  function busy(text, button) {
    state.busy += 1;
    $("busy-text").textContent = text;
    $("busy").hidden = false;
    document.body.setAttribute("aria-busy", "true");
    if (button) button.disabled = true;
    return () => {
      state.busy -= 1;
      if (button) button.disabled = false;
      if (state.busy === 0) {
        $("busy").hidden = true;
        document.body.removeAttribute("aria-busy");
      }
    };
  }

  // ---- decoding helpers ----------------------------------------------------------------------

  function base64Bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function loadImage(blob) {
    return new Promise((resolve, reject) => {
      const url = URL.createObjectURL(blob);
      const img = new Image();
      img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
      img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot decode this picture")); };
      img.src = url;
    });
  }

  function canvas2d(w, h) {
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    return [c, c.getContext("2d", { willReadFrequently: true })];
  }

  // RGBA pixels of `img` drawn at w x h.
  function pixels(img, w, h) {
    const [, ctx] = canvas2d(w, h);
    ctx.drawImage(img, 0, 0, w, h);
    return ctx.getImageData(0, 0, w, h);
  }

  async function pngPixels(b64, w, h, what) {
    const img = await loadImage(new Blob([base64Bytes(b64)], { type: "image/png" }));
    if (img.naturalWidth !== w || img.naturalHeight !== h) {
      throw new Error(what + " PNG is " + img.naturalWidth + "x" + img.naturalHeight + ", the picture " + w + "x" + h);
    }
    return pixels(img, w, h).data;
  }

  // Label colours -> position in `classes` (-1 = background). The label PNG is paletted with
  // the classes' colours and black for label 255; the browser hands back the palette colours.
  // Anything not a class colour is background; a colour within 2 per channel of exactly one
  // class colour counts as that class (in case a browser adjusts colours slightly).
  function labelMap(rgba, classes) {
    const n = rgba.length / 4;
    const out = new Int16Array(n);
    const known = new Map();
    classes.forEach((c, k) => known.set((c.color[0] << 16) | (c.color[1] << 8) | c.color[2], k));
    const nearest = (r, g, b) => {
      let found = -1;
      classes.forEach((c, k) => {
        if (Math.abs(c.color[0] - r) <= 2 && Math.abs(c.color[1] - g) <= 2 && Math.abs(c.color[2] - b) <= 2) {
          found = found === -1 ? k : -2;
        }
      });
      return found >= 0 ? found : -1;
    };
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      const key = (rgba[j] << 16) | (rgba[j + 1] << 8) | rgba[j + 2];
      let k = known.get(key);
      if (k === undefined) {
        k = key === 0 ? -1 : nearest(rgba[j], rgba[j + 1], rgba[j + 2]);
        known.set(key, k);
      }
      out[i] = k;
    }
    return out;
  }

  function stem(name) {
    const base = String(name || "image").split(/[\\/]/).pop();
    const dot = base.lastIndexOf(".");
    return dot > 0 ? base.slice(0, dot) : base;
  }

  // ---- info, token, tabs ---------------------------------------------------------------------

  async function loadInfo() {
    try {
      const info = await (await api("/v1/info")).json();
      state.info = info;
      showInfo(info);
      if (/token/i.test($("error").textContent)) setError("");
    } catch (e) {
      state.info = null;
      $("info").textContent = "server info unavailable";
      setError(e.status === 401 ? "this server needs a token: " + e.message : e.message, e.status);
      setSearchEnabled(false, "");
    }
  }

  function showInfo(info) {
    const parts = ["zeroseg " + (info.zeroseg_version || "?")];
    const m = info.model || {};
    if (m.source) parts.push("model " + m.source + (m.synthetic ? " (synthetic weights: meaningless labels)" : ""));
    if (info.index) {
      const ix = info.index;
      parts.push("index " + (ix.images != null ? ix.images + " pictures" : ix.path) +
                 (ix.regions && ix.regions !== "none" ? ", regions: " + ix.regions : ""));
    } else {
      parts.push("no index");
    }
    if (info.auth) parts.push("token required");
    $("info").textContent = parts.join(" · ");
    if (info.auth && !$("token").value.trim()) setError("this server needs a token: type it in the token field");

    if (info.index) {
      setSearchEnabled(true, "");
      const noRegions = info.index.regions === "none";
      $("search-regions").disabled = noRegions;
      if (noRegions) $("search-regions").checked = false;
      $("search-regions").parentElement.title = noRegions ? "this index has no regions" : "search the pictures' regions too";
    } else {
      setSearchEnabled(false, "no index on this server (start it with --index DIR)");
    }
  }

  function setSearchEnabled(on, note) {
    $("tab-search").disabled = !on;
    $("search-note").textContent = note;
    $("search-note").hidden = !note;
    if (!on && !$("panel-search").hidden) selectTab("segment");
  }

  function selectTab(name) {
    for (const t of ["segment", "search"]) {
      const selected = t === name;
      $("tab-" + t).setAttribute("aria-selected", String(selected));
      $("panel-" + t).hidden = !selected;
    }
  }

  // ---- segment -------------------------------------------------------------------------------

  function pickedImage() {
    const file = $("image").files[0];
    if (state.previewURL) URL.revokeObjectURL(state.previewURL);
    state.previewURL = null;
    if (!file) {
      $("preview").hidden = true;
      $("drop-text").textContent = "Pick or drop an image (JPEG or PNG)";
      return;
    }
    state.previewURL = URL.createObjectURL(file);
    $("preview").src = state.previewURL;
    $("preview").hidden = false;
    $("drop-text").textContent = file.name + " (" + Math.max(1, Math.round(file.size / 1024)) + " KiB)";
  }

  async function segment(ev) {
    ev.preventDefault();
    const file = $("image").files[0];
    const classes = $("classes").value.trim();
    if (!file) return setError("pick or drop an image first");
    if (!classes) return setError("type at least one class");
    const limits = (state.info && state.info.limits) || {};
    if (limits.max_upload_bytes && file.size > limits.max_upload_bytes) {
      return setError(file.name + " is " + file.size + " bytes; this server takes at most " + limits.max_upload_bytes);
    }
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("classes", classes);
    const background = $("background").value.trim();
    if (background) form.append("background", background);
    for (const id of ["method", "refine", "mode"]) form.append(id, $(id).value);
    const threshold = $("threshold").value.trim();
    if (threshold !== "") form.append("threshold", threshold);

    setError("");
    const seq = ++state.segSeq;
    const done = busy("segmenting " + file.name + "…", $("run"));
    try {
      // Decoded while the server works; the server's error, if any, is the one shown.
      const decoding = loadImage(file);
      decoding.catch(() => {});
      const rec = await (await api("/v1/segment", { method: "POST", body: form })).json();
      const picture = await decoding;
      if (seq !== state.segSeq) return;
      await showSegmentation(rec, picture, seq);
    } catch (e) {
      if (seq === state.segSeq) setError(e.message, e.status);
    } finally {
      done();
    }
  }

  async function showSegmentation(rec, picture, seq) {
    const w = rec.width, h = rec.height;
    const classes = rec.classes || [];
    if (!rec.png || !rec.png.labels || !rec.png.score) throw new Error("the server's answer has no label or score PNG");
    // The server turns JPEGs upright by their EXIF orientation, as the browser does: draw the
    // picture at the record's size.
    const pic = pixels(picture, w, h);
    const [labelRGBA, scoreRGBA] = await Promise.all([
      pngPixels(rec.png.labels, w, h, "label"),
      pngPixels(rec.png.score, w, h, "score"),
    ]);
    if (seq !== state.segSeq) return;
    const score = new Uint8Array(w * h);
    for (let i = 0; i < score.length; i++) score[i] = scoreRGBA[4 * i];
    state.seg = {
      rec, w, h, classes, pic,
      labels: labelMap(labelRGBA, classes),
      score,
      enabled: classes.map(() => true),
    };
    showLegend(rec);
    showDownloads(rec);
    const t = rec.timings && rec.timings.total;
    const s = rec.settings || {};
    $("timing").textContent = (t != null ? "segmented in " + t.toFixed(2) + " s" : "segmented") +
      (s.method ? " · " + s.method : "") + " · " + w + "×" + h;
    $("readout").textContent = "";
    $("result").hidden = false;
    compose();
  }

  // Blends each enabled class's colour over the picture at ALPHA into #overlay.
  function compose() {
    const s = state.seg;
    if (!s) return;
    const [c, ctx] = canvas2d(s.w, s.h);
    const out = ctx.createImageData(s.w, s.h);
    const src = s.pic.data, dst = out.data;
    const colours = s.classes.map((cl) => cl.color);
    for (let i = 0, j = 0; i < s.labels.length; i++, j += 4) {
      const k = s.labels[i];
      if (k >= 0 && s.enabled[k]) {
        const col = colours[k];
        dst[j] = Math.round(src[j] * (1 - ALPHA) + col[0] * ALPHA);
        dst[j + 1] = Math.round(src[j + 1] * (1 - ALPHA) + col[1] * ALPHA);
        dst[j + 2] = Math.round(src[j + 2] * (1 - ALPHA) + col[2] * ALPHA);
      } else {
        dst[j] = src[j];
        dst[j + 1] = src[j + 1];
        dst[j + 2] = src[j + 2];
      }
      dst[j + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    $("overlay").src = c.toDataURL("image/png");
  }

  function percent(x) { return (100 * x).toFixed(x < 0.001 && x > 0 ? 2 : 1) + "%"; }

  function showLegend(rec) {
    const ul = $("legend");
    ul.textContent = "";
    rec.classes.forEach((c, k) => {
      const li = document.createElement("li");
      li.dataset.index = String(c.index);
      li.dataset.name = c.name;
      li.dataset.area = String(c.area);
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.className = "toggle";
      box.title = "show " + c.name;
      box.addEventListener("change", () => {
        state.seg.enabled[k] = box.checked;
        li.classList.toggle("off", !box.checked);
        compose();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = "rgb(" + c.color.join(",") + ")";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.name;
      label.append(box, swatch, name);
      const others = (c.names || []).filter((n) => n !== c.name);
      if (others.length) {
        const syn = document.createElement("span");
        syn.className = "muted";
        syn.textContent = " (" + others.join(", ") + ")";
        label.append(syn);
      }
      const stats = document.createElement("span");
      stats.className = "stats muted";
      stats.textContent = percent(c.area) + (c.area > 0 ? " · score " + c.mean_score.toFixed(2) : "");
      li.append(label, stats);
      ul.append(li);
    });
    const bgNames = (rec.settings && rec.settings.background) || [];
    const bgText = Array.isArray(bgNames) ? bgNames.join(", ") : String(bgNames || "");
    $("legend-background").textContent = "background" + (bgText ? " (" + bgText + ")" : "") +
      " or unlabelled: " + percent(rec.background_or_unlabelled_area || 0);
  }

  function showDownloads(rec) {
    for (const u of state.downloadURLs) URL.revokeObjectURL(u);
    const name = stem(rec.image);
    const labels = URL.createObjectURL(new Blob([base64Bytes(rec.png.labels)], { type: "image/png" }));
    const overlay = rec.png.overlay
      ? URL.createObjectURL(new Blob([base64Bytes(rec.png.overlay)], { type: "image/png" })) : null;
    const record = Object.assign({}, rec);
    delete record.png;
    const json = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2) + "\n"], { type: "application/json" }));
    state.downloadURLs = [labels, json].concat(overlay ? [overlay] : []);
    $("download-overlay").hidden = !overlay;
    if (overlay) {
      $("download-overlay").href = overlay;
      $("download-overlay").download = name + ".overlay.png";
    }
    $("download-labels").href = labels;
    $("download-labels").download = name + ".labels.png";
    $("download-json").href = json;
    $("download-json").download = name + ".json";
  }

  function hover(ev) {
    const s = state.seg, img = $("overlay");
    if (!s || !img.clientWidth || !img.clientHeight) return;
    const x = Math.min(s.w - 1, Math.max(0, Math.floor(ev.offsetX * img.naturalWidth / img.clientWidth)));
    const y = Math.min(s.h - 1, Math.max(0, Math.floor(ev.offsetY * img.naturalHeight / img.clientHeight)));
    const i = y * s.w + x;
    const k = s.labels[i];
    const out = $("readout");
    out.textContent = k < 0 ? "background" : s.classes[k].name + " " + (s.score[i] / 255).toFixed(2);
    out.title = "pixel " + x + ", " + y;
  }

  // ---- search --------------------------------------------------------------------------------

  async function search(ev) {
    ev.preventDefault();
    const text = $("search-text").value.trim();
    const file = $("search-image").files[0];
    if (!text && !file) return setError("type a text or pick an image to search with");
    const form = new FormData();
    if (text) form.append("text", text);
    if (file) form.append("image", file, file.name);
    form.append("regions", $("search-regions").checked ? "true" : "false");
    const top = $("search-top").value.trim();
    if (top) form.append("top", top);

    setError("");
    const seq = ++state.searchSeq;
    const done = busy("searching…", $("search-run"));
    try {
      const rec = await (await api("/v1/search", { method: "POST", body: form })).json();
      if (seq === state.searchSeq) showHits(rec);
    } catch (e) {
      if (seq === state.searchSeq) setError(e.message, e.status);
    } finally {
      done();
    }
  }

  function showHits(rec) {
    for (const u of state.searchURLs) URL.revokeObjectURL(u);
    state.searchURLs = [];
    const grid = $("hits");
    grid.textContent = "";
    const hits = rec.hits || [];
    const t = rec.timings && rec.timings.search;
    $("search-summary").textContent = hits.length
      ? hits.length + " hit" + (hits.length === 1 ? "" : "s") + (t != null ? " in " + (1000 * t).toFixed(1) + " ms" : "")
      : "no hits";
    const pictures = new Map(); // image_id -> Promise of {img, url}: each picture fetched once
    for (const hit of hits) {
      const fig = document.createElement("figure");
      fig.className = "hit";
      fig.dataset.rank = String(hit.rank);
      fig.dataset.id = String(hit.id);
      fig.dataset.region = hit.region ? "true" : "false";
      const link = document.createElement("a");
      link.target = "_blank";
      link.rel = "noopener";
      const canvas = document.createElement("canvas");
      canvas.width = 200;
      canvas.height = 150;
      link.append(canvas);
      const cap = document.createElement("figcaption");
      const rank = document.createElement("strong");
      rank.textContent = "#" + hit.rank;
      const file = hit.path ? String(hit.path).split(/[\\/]/).pop() : "(no picture)";
      cap.append(rank, " " + Number(hit.score).toFixed(3) + " · " + file +
                 (hit.region ? " · " + hit.region.source : ""));
      cap.title = hit.path || "";
      fig.append(link, cap);
      grid.append(fig);
      if (hit.image_id == null) {
        fig.classList.add("missing");
        continue;
      }
      if (!pictures.has(hit.image_id)) pictures.set(hit.image_id, fetchPicture(hit.image_id));
      pictures.get(hit.image_id).then(({ img, url }) => {
        if (!grid.contains(fig)) return;
        link.href = url;
        drawHit(canvas, img, hit.region);
        fig.dataset.loaded = "true";
      }).catch((e) => {
        fig.classList.add("missing");
        cap.append(" · " + e.message);
      });
    }
  }

  async function fetchPicture(id) {
    const blob = await (await api("/v1/images/" + encodeURIComponent(id))).blob();
    const url = URL.createObjectURL(blob);
    state.searchURLs.push(url);
    const img = await new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = () => reject(new Error("cannot decode picture " + id));
      im.src = url;
    });
    return { img, url };
  }

  // Decodes COCO's uncompressed RLE (column-major runs, zeros first) into bits at x * h + y.
  function rleBits(mask) {
    const w = mask.width != null ? mask.width : mask.size && mask.size[1];
    const h = mask.height != null ? mask.height : mask.size && mask.size[0];
    if (!w || !h || !Array.isArray(mask.counts)) return null;
    const n = w * h, bits = new Uint8Array(n);
    let i = 0, v = 0;
    for (const c of mask.counts) {
      if (v) bits.fill(1, i, Math.min(i + c, n));
      i += c;
      v ^= 1;
    }
    return { w, h, bits };
  }

  const MAX_THUMB_W = 220, MAX_THUMB_H = 180;

  function drawHit(canvas, img, region) {
    const nw = img.naturalWidth, nh = img.naturalHeight;
    const scale = Math.min(MAX_THUMB_W / nw, MAX_THUMB_H / nh, 1);
    const cw = Math.max(1, Math.round(nw * scale)), ch = Math.max(1, Math.round(nh * scale));
    canvas.width = cw;
    canvas.height = ch;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, cw, ch);
    if (!region) return;
    const mask = region.mask ? rleBits(region.mask) : null;
    // Box and mask are in the picture's pixels (the mask's size when it has one).
    const refW = mask ? mask.w : nw, refH = mask ? mask.h : nh;
    const sx = cw / refW, sy = ch / refH;
    if (mask) {
      const [mc, mctx] = canvas2d(cw, ch);
      const data = mctx.createImageData(cw, ch);
      for (let ty = 0; ty < ch; ty++) {
        const my = Math.min(mask.h - 1, Math.floor((ty + 0.5) / sy));
        for (let tx = 0; tx < cw; tx++) {
          const mx = Math.min(mask.w - 1, Math.floor((tx + 0.5) / sx));
          if (mask.bits[mx * mask.h + my]) {
            const j = 4 * (ty * cw + tx);
            data.data[j] = 255; data.data[j + 1] = 225; data.data[j + 2] = 25; data.data[j + 3] = 110;
          }
        }
      }
      mctx.putImageData(data, 0, 0);
      ctx.drawImage(mc, 0, 0);
    }
    const b = region.box;
    if (b) {
      const x = b.x0 * sx, y = b.y0 * sy, w = (b.x1 - b.x0) * sx, h = (b.y1 - b.y0) * sy;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "rgba(0,0,0,0.6)";
      ctx.strokeRect(x + 0.5, y + 0.5, Math.max(1, w - 1), Math.max(1, h - 1));
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "rgb(255,225,25)";
      ctx.strokeRect(x + 0.5, y + 0.5, Math.max(1, w - 1), Math.max(1, h - 1));
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  function setUp() {
    const token = $("token");
    try { token.value = localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { /* storage off */ }
    token.addEventListener("change", () => {
      const t = token.value.trim();
      try {
        if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
      } catch (_) { /* storage off */ }
      loadInfo();
    });

    $("tab-segment").addEventListener("click", () => selectTab("segment"));
    $("tab-search").addEventListener("click", () => { if (!$("tab-search").disabled) selectTab("search"); });

    $("image").addEventListener("change", pickedImage);
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const files = e.dataTransfer && e.dataTransfer.files;
      if (!files || !files.length) return;
      $("image").files = files;
      pickedImage();
    });

    $("segment-form").addEventListener("submit", segment);
    $("search-form").addEventListener("submit", search);
    const overlay = $("overlay");
    overlay.addEventListener("mousemove", hover);
    overlay.addEventListener("mouseleave", () => { $("readout").textContent = ""; });

    loadInfo();
  }

  setUp();
})();
