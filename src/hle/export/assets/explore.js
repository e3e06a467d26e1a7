/* hle explore: draws each image's panels and computes, per click, from the maps stored in
   the page: the cosine distance of every pixel to the clicked one (the paper's Fig. 1), the
   class kernel psi_k of its class (Eq. 9) and the instance kernel Phi with it as the seed
   (Sec. 3.5). A classic script (no modules, no fetch), so the page works opened from disk.
   Conventions follow hle.core.kernels: cosine distances clamped to [0, 2], class means
   re-normalised, map pixel (r, c) at ((r + 0.5) s - 0.5, (c + 0.5) s - 0.5) input pixels
   times coordScale; with the split-embedding ablation psi reads the first D/2 channels and
   Phi the last D/2, each re-normalised. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("hle-data").textContent);
  var PANELS = [
    ["input", "input"],
    ["panoptic", "panoptic prediction (hover for class, segment id, score)"],
    ["embedding", "embedding, PCA to RGB"],
    ["distance", "cosine distance to the clicked pixel (Fig. 1)"],
    ["psi", "class kernel \u03c8 of the clicked pixel's class (Eq. 9)"],
    ["phi", "instance kernel \u03a6 with the clicked pixel as seed (Sec. 3.5)"]
  ];

  function bytesOf(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function typedOf(b64, Type) {  // little-endian, as every browser platform is
    var b = bytesOf(b64);
    return new Type(b.buffer, 0, b.length / Type.BYTES_PER_ELEMENT);
  }

  function unitRows(raw, n, dim, from, to) {  // rows raw[j, from:to] scaled to unit length
    var k = to - from, out = new Float32Array(n * k);
    for (var j = 0; j < n; j++) {
      var base = j * dim + from, norm = 0;
      for (var d = 0; d < k; d++) norm += raw[base + d] * raw[base + d];
      norm = Math.max(Math.sqrt(norm), 1e-12);
      for (d = 0; d < k; d++) out[j * k + d] = raw[base + d] / norm;
    }
    return out;
  }

  function axis(size, stride) {  // hle.core.kernels.axis_coordinates
    var out = new Float64Array(size);
    for (var i = 0; i < size; i++) out[i] = ((i + 0.5) * stride - 0.5) * DATA.coordScale;
    return out;
  }

  function prepare(img) {
    var n = img.mapHeight * img.mapWidth, dim = img.embedding.dim, q = bytesOf(img.embedding.q);
    var lo = img.embedding.lo, step = img.embedding.step, raw = new Float32Array(n * dim);
    for (var j = 0; j < n; j++) {
      for (var d = 0; d < dim; d++) raw[j * dim + d] = lo[d] + q[j * dim + d] * step[d];
    }
    var half = dim / 2, full = unitRows(raw, n, dim, 0, dim);
    var sq = typedOf(img.sigma.q, Uint16Array), sigma = new Float64Array(n), spatial = new Float64Array(n);
    for (j = 0; j < n; j++) {
      sigma[j] = img.sigma.lo[0] + sq[2 * j] * img.sigma.step[0];
      spatial[j] = img.sigma.lo[1] + sq[2 * j + 1] * img.sigma.step[1];
    }
    var values = typedOf(img.ids.values, Int32Array), lengths = typedOf(img.ids.lengths, Int32Array);
    var ids = new Int32Array(n), at = 0;
    for (var r = 0; r < values.length; r++) { ids.fill(values[r], at, at + lengths[r]); at += lengths[r]; }
    var segments = {};
    img.segments.forEach(function (s) { segments[s.id] = s; });
    var ds = DATA.split ? half : dim, C = DATA.classMeans.length;
    var means = unitRows(Float32Array.from([].concat.apply([], DATA.classMeans.map(function (m) {
      return m.slice(0, ds);
    }))), C, ds, 0, ds);
    return {
      n: n, dim: dim, ds: ds, C: C, full: full, means: means,
      sem: DATA.split ? unitRows(raw, n, dim, 0, half) : full,
      ins: DATA.split ? unitRows(raw, n, dim, half, dim) : full,
      sigma: sigma, spatial: spatial, ids: ids, segments: segments,
      rows: axis(img.mapHeight, img.stride), cols: axis(img.mapWidth, img.stride)
    };
  }

  function dot(a, i, b, j, k) {
    var s = 0;
    for (var d = 0; d < k; d++) s += a[i * k + d] * b[j * k + d];
    return s;
  }

  function cosDist(a, i, b, j, k) { return Math.min(Math.max(1 - dot(a, i, b, j, k), 0), 2); }

  function classLogits(st, j, out) {  // Eq. (9): log p_c = -d_cos(e_j, mu_c) / (2 sigma_c^2)
    for (var c = 0; c < st.C; c++) {
      var s = DATA.classSigma[c];
      out[c] = -cosDist(st.sem, j, st.means, c, st.ds) / (2 * s * s);
    }
    return out;
  }

  function kernels(img, st, i) {
    var n = st.n, w = img.mapWidth, dist = new Float32Array(n), psi = new Float32Array(n);
    var phi = new Float32Array(n), logits = new Float64Array(st.C), dmax = 0, j, c;
    for (j = 0; j < n; j++) {
      dist[j] = cosDist(st.full, i, st.full, j, st.dim);
      dmax = Math.max(dmax, dist[j]);
    }
    classLogits(st, i, logits);
    var k = 0;
    for (c = 1; c < st.C; c++) if (logits[c] > logits[k]) k = c;
    for (j = 0; j < n; j++) {
      classLogits(st, j, logits);
      var top = logits[0], sum = 0;
      for (c = 1; c < st.C; c++) top = Math.max(top, logits[c]);
      for (c = 0; c < st.C; c++) sum += Math.exp(logits[c] - top);
      psi[j] = Math.exp(logits[k] - top) / sum;
    }
    var a = 1 / (2 * st.sigma[i] * st.sigma[i]), b = 1 / (2 * st.spatial[i] * st.spatial[i]);
    var ri = st.rows[Math.floor(i / w)], ci = st.cols[i % w];
    for (j = 0; j < n; j++) {
      var dy = st.rows[Math.floor(j / w)] - ri, dx = st.cols[j % w] - ci;
      var e = -cosDist(st.ins, i, st.ins, j, st.ds) * a - (dy * dy + dx * dx) * b;
      phi[j] = Math.exp(Math.min(e, 0));
    }
    return { dist: dist, dmax: dmax, psi: psi, phi: phi, cls: k, psiAt: psi[i] };
  }

  function paint(canvas, brightness) {  // brightness in [0, 1] -> colour table
    var ctx = canvas.getContext("2d"), im = ctx.createImageData(canvas.width, canvas.height);
    for (var j = 0; j < brightness.length; j++) {
      var idx = Math.min(255, Math.max(0, Math.floor(brightness[j] * 256))), rgb = DATA.lut[idx];
      im.data[4 * j] = rgb[0]; im.data[4 * j + 1] = rgb[1]; im.data[4 * j + 2] = rgb[2]; im.data[4 * j + 3] = 255;
    }
    ctx.putImageData(im, 0, 0);
  }

  function element(tag, attrs, parent) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) { el.setAttribute(key, attrs[key]); });
    if (parent) parent.appendChild(el);
    return el;
  }

  function pixelAt(img, view, event) {  // input pixel and map pixel under the pointer
    var rect = view.getBoundingClientRect();
    var x = Math.min(img.width - 1, Math.max(0, Math.floor((event.clientX - rect.left) / rect.width * img.width)));
    var y = Math.min(img.height - 1, Math.max(0, Math.floor((event.clientY - rect.top) / rect.height * img.height)));
    var r = Math.min(img.mapHeight - 1, Math.floor(y / img.stride));
    var c = Math.min(img.mapWidth - 1, Math.floor(x / img.stride));
    return { x: x, y: y, r: r, c: c, index: r * img.mapWidth + c };
  }

  function describe(st, index) {
    var id = st.ids[index], s = st.segments[id];
    if (!id || !s) return "void (id 0)";
    return s.name + (s.isthing ? " (thing)" : " (stuff)") + " \u00b7 segment id " + id + " \u00b7 score " + s.score.toFixed(3);
  }

  function buildSection(img, index, parent) {
    var section = element("section", { "class": "image", "data-index": index }, parent);
    element("h2", {}, section).textContent = img.name + " \u2014 " + img.width + "\u00d7" + img.height +
      " input, maps at stride " + img.stride + " (" + img.mapWidth + "\u00d7" + img.mapHeight + ")";
    var grid = element("div", { "class": "grid" }, section), views = {}, canvases = {}, markers = [];
    PANELS.forEach(function (panel) {
      var figure = element("figure", {}, grid), view = element("div", { "class": "view", "data-panel": panel[0] }, figure);
      if (panel[0] === "input" || panel[0] === "panoptic" || panel[0] === "embedding") {
        var src = { input: img.image, panoptic: img.panoptic, embedding: img.embeddingRGB }[panel[0]];
        element("img", { src: src, alt: panel[1], "class": panel[0] === "embedding" ? "pixelated" : "" }, view);
      } else {
        canvases[panel[0]] = element("canvas", { width: img.mapWidth, height: img.mapHeight, "data-panel": panel[0] }, view);
      }
      markers.push(element("div", { "class": "marker" }, view));
      element("figcaption", { "data-panel": panel[0] }, figure).textContent = panel[1];
      views[panel[0]] = view;
    });
    var info = element("div", { "class": "info" }, section);
    return { section: section, views: views, canvases: canvases, markers: markers,
      hover: element("span", { "class": "hover" }, info), click: element("span", { "class": "click" }, info) };
  }

  function select(img, st, ui, p) {
    var k = kernels(img, st, p.index), bright = new Float32Array(st.n);
    for (var j = 0; j < st.n; j++) bright[j] = k.dmax > 0 ? 1 - k.dist[j] / k.dmax : 1;
    paint(ui.canvases.distance, bright);
    paint(ui.canvases.psi, k.psi);
    paint(ui.canvases.phi, k.phi);
    ui.canvases.distance.setAttribute("data-scale", String(k.dmax));
    var left = Math.min(100, (p.c + 0.5) * img.stride / img.width * 100);
    var top = Math.min(100, (p.r + 0.5) * img.stride / img.height * 100);
    ui.markers.forEach(function (m) { m.style.left = left + "%"; m.style.top = top + "%"; m.style.display = "block"; });
    var name = DATA.classes[k.cls].name;
    ui.section.setAttribute("data-selected", p.r + "," + p.c);
    ui.section.setAttribute("data-class", String(k.cls));
    ui.click.textContent = "clicked map pixel (" + p.r + ", " + p.c + "): class " + name + " (\u03c8 " + k.psiAt.toFixed(3) +
      "), \u03c3 " + st.sigma[p.index].toFixed(3) + ", spatial \u03c3 " + st.spatial[p.index].toFixed(3) +
      ", distances 0\u2013" + k.dmax.toFixed(3) + "; " + describe(st, p.index);
    ui.section.querySelector('figcaption[data-panel="psi"]').textContent =
      "class kernel \u03c8 of " + name + " (Eq. 9), 0\u20131";
  }

  function setUp(img, index, parent) {
    var ui = buildSection(img, index, parent), st = prepare(img);
    Object.keys(ui.views).forEach(function (key) {
      var view = ui.views[key];
      view.addEventListener("mousemove", function (event) {
        var p = pixelAt(img, view, event);
        ui.hover.textContent = "(" + p.x + ", " + p.y + ") " + describe(st, p.index) + "\n";
      });
      view.addEventListener("click", function (event) { select(img, st, ui, pixelAt(img, view, event)); });
    });
    var r = Math.floor(img.mapHeight / 2), c = Math.floor(img.mapWidth / 2);
    select(img, st, ui, { r: r, c: c, index: r * img.mapWidth + c });
  }

  var main = document.getElementById("images"), next = 0;
  (function step() {  // one image per task, so the page stays responsive while it prepares
    if (next < DATA.images.length) {
      setUp(DATA.images[next], next, main);
      next += 1;
      setTimeout(step, 0);
    } else {
      document.body.setAttribute("data-ready", "1");
    }
  })();
})();
