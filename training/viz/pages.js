// Shared by scratchformer's pages (attention, timeline): line charts with numbers on hover, attention
// heatmaps, a colour legend and a head view in the spirit of bertviz. Plain DOM, SVG and canvas, no
// library and no network, so a page works offline and from a file.
var SF = (function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var tip = null;

  function el(tag, attrs, parent) {
    var node = tag.indexOf("svg:") === 0 ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    if (parent) parent.appendChild(node);
    return node;
  }

  function tooltip() {
    if (!tip) { tip = el("div", { id: "tooltip" }, document.body); }
    return tip;
  }
  function showTip(lines, event) {
    var t = tooltip();
    t.textContent = "";
    lines.forEach(function (line, i) {
      var row = el("div", {}, t);
      if (typeof line === "string") { row.textContent = line; if (i === 0) row.style.fontWeight = "600"; return; }
      if (line.color) el("i", { style: "display:inline-block;width:10px;height:10px;margin-right:5px;background:" +
                                         line.color }, row);
      row.appendChild(document.createTextNode(line.text));
    });
    t.style.display = "block";
    var x = event.clientX + 14, y = event.clientY + 12;
    var w = t.offsetWidth, h = t.offsetHeight;
    if (x + w > window.innerWidth - 4) x = event.clientX - w - 14;
    if (y + h > window.innerHeight - 4) y = Math.max(4, window.innerHeight - h - 4);
    t.style.left = x + "px";
    t.style.top = y + "px";
  }
  function hideTip() { if (tip) tip.style.display = "none"; }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return a >= 100 ? v.toFixed(1) : a >= 10 ? v.toFixed(2) : v.toFixed(3);
  }

  function ticks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
    return out;
  }

  // A line chart. spec: {title, xLabel, yLabel, series: [{name, color, xs, ys, width, dash, points, group}],
  // vlines: [{x, color, label, dash}], yMin, yMax, height, top (tooltip lists the top n series by value),
  // legend: [{name, color}] (default: one item per series)}.
  function lineChart(parent, spec) {
    var box = el("div", { "class": "chart" }, parent);
    var W = Math.max(360, Math.min(parent.clientWidth || 900, 980)), H = spec.height || 250;
    var m = { l: 58, r: 14, t: 24, b: 40 };
    var svg = el("svg:svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" }, box);
    el("svg:title", { text: spec.title }, svg);
    var xs = [], ys = [];
    spec.series.forEach(function (s) {
      s.xs.forEach(function (x, i) { if (s.ys[i] !== null && isFinite(s.ys[i])) { xs.push(x); ys.push(s.ys[i]); } });
    });
    (spec.vlines || []).forEach(function (v) { xs.push(v.x); });
    if (!xs.length) { el("p", { "class": "hint", text: spec.title + ": nothing logged." }, box); return box; }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) x1 = x0 + 1;
    var y0 = spec.yMin !== undefined ? spec.yMin : Math.min.apply(null, ys);
    var y1 = spec.yMax !== undefined ? spec.yMax : Math.max.apply(null, ys);
    if (spec.yMin === undefined || spec.yMax === undefined) {
      var pad = (y1 - y0) * 0.05 || Math.abs(y1) * 0.05 || 1;
      if (spec.yMin === undefined) y0 -= pad;
      if (spec.yMax === undefined) y1 += pad;
    }
    function X(x) { return m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r); }
    function Y(y) { return H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b); }
    el("svg:text", { x: m.l, y: 15, "class": "title", text: spec.title }, svg);
    ticks(y0, y1, 5).forEach(function (v) {
      el("svg:line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), stroke: "#e5e5e5" }, svg);
      el("svg:text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", text: fmt(v) }, svg);
    });
    ticks(x0, x1, 8).forEach(function (v) {
      el("svg:line", { x1: X(v), x2: X(v), y1: H - m.b, y2: H - m.b + 4, stroke: "#999" }, svg);
      el("svg:text", { x: X(v), y: H - m.b + 16, "text-anchor": "middle", text: String(v) }, svg);
    });
    el("svg:line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, stroke: "#999" }, svg);
    el("svg:line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, stroke: "#999" }, svg);
    el("svg:text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", text: spec.xLabel || "step" }, svg);
    el("svg:text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
                     transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")", text: spec.yLabel || "" }, svg);
    (spec.vlines || []).forEach(function (v) {
      el("svg:line", { x1: X(v.x), x2: X(v.x), y1: m.t, y2: H - m.b, stroke: v.color || "#888",
                       "stroke-dasharray": v.dash || "3 3", "stroke-width": v.width || 1, "class": "vline" }, svg);
      if (v.label) el("svg:text", { x: X(v.x) + 3, y: m.t + 10, text: v.label, fill: v.color || "#666" }, svg);
    });
    spec.series.forEach(function (s) {
      var d = "", pen = false;
      s.xs.forEach(function (x, i) {
        var y = s.ys[i];
        if (y === null || !isFinite(y)) { pen = false; return; }
        d += (pen ? "L" : "M") + X(x).toFixed(1) + "," + Y(Math.max(y0, Math.min(y1, y))).toFixed(1);
        pen = true;
      });
      if (d) el("svg:path", { d: d, fill: "none", stroke: s.color, "stroke-width": s.width || 1.5,
                              "stroke-dasharray": s.dash || "", opacity: s.opacity || 1, "class": "series" }, svg);
      if (s.points) s.xs.forEach(function (x, i) {
        if (s.ys[i] !== null && isFinite(s.ys[i])) el("svg:circle", { cx: X(x), cy: Y(s.ys[i]), r: 2.6, fill: s.color }, svg);
      });
    });
    var legend = el("div", { "class": "legend" }, box);
    (spec.legend || spec.series.filter(function (s) { return !s.hideLegend; })).forEach(function (s) {
      var item = el("span", { "class": "item" }, legend);
      el("i", { style: "background:" + s.color + (s.dash ? ";height:1px;border-top:2px dashed " + s.color : "") }, item);
      item.appendChild(document.createTextNode(s.name));
    });
    (spec.vlines || []).forEach(function (v) {
      if (!v.legend) return;
      var item = el("span", { "class": "item" }, legend);
      el("i", { style: "height:0;border-top:2px dashed " + (v.color || "#888") }, item);
      item.appendChild(document.createTextNode(v.legend));
    });
    // Hover: a crosshair at the nearest logged step and every series' value there.
    var cross = el("svg:line", { y1: m.t, y2: H - m.b, stroke: "#555", "stroke-width": 1, visibility: "hidden" }, svg);
    var overlay = el("svg:rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "transparent",
                                   "class": "hover" }, svg);
    var allX = Array.from(new Set(xs)).sort(function (a, b) { return a - b; });
    overlay.addEventListener("mousemove", function (event) {
      var r = svg.getBoundingClientRect();
      var x = x0 + (event.clientX - r.left - m.l) / (W - m.l - m.r) * (x1 - x0);
      var best = allX[0];
      allX.forEach(function (v) { if (Math.abs(v - x) < Math.abs(best - x)) best = v; });
      cross.setAttribute("x1", X(best)); cross.setAttribute("x2", X(best));
      cross.setAttribute("visibility", "visible");
      var rows = [];
      spec.series.forEach(function (s) {
        var i = nearestIndex(s.xs, best);
        if (i < 0 || s.ys[i] === null || (s.exact !== false && s.xs[i] !== best)) return;
        rows.push({ color: s.color, value: s.ys[i], text: s.name + ": " + fmt(s.ys[i]) });
      });
      if (spec.top) {
        rows.sort(function (a, b) { return b.value - a.value; });
        var more = rows.length - spec.top;
        rows = rows.slice(0, spec.top);
        if (more > 0) rows.push({ text: "(" + more + " more below)" });
      }
      (spec.vlines || []).forEach(function (v) { if (v.x === best && v.label) rows.push({ text: v.label }); });
      showTip([(spec.xLabel || "step") + " " + best].concat(rows), event);
    });
    overlay.addEventListener("mouseleave", function () { cross.setAttribute("visibility", "hidden"); hideTip(); });
    return box;
  }

  function nearestIndex(xs, x) {
    var best = -1;
    xs.forEach(function (v, i) { if (best < 0 || Math.abs(v - x) < Math.abs(xs[best] - x)) best = i; });
    return best;
  }

  // Matplotlib's "Blues", sampled: weight 0 is near white, 1 dark blue.
  var BLUES = [[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214], [66, 146, 198],
               [33, 113, 181], [8, 81, 156], [8, 48, 107]];
  function blue(w) {
    w = Math.max(0, Math.min(1, w)) * (BLUES.length - 1);
    var i = Math.min(BLUES.length - 2, Math.floor(w)), f = w - i, a = BLUES[i], b = BLUES[i + 1];
    return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); }).join(",") + ")";
  }

  // A heatmap of rows (row q may be shorter than the number of keys: the causal future, drawn grey).
  function heatmap(parent, rows, cell, tokens, onHover) {
    var L = rows.length, K = Math.max.apply(null, rows.map(function (r) { return r.length; }).concat([L]));
    var canvas = el("canvas", { width: K * cell, height: L * cell }, parent);
    var ctx = canvas.getContext("2d");
    for (var q = 0; q < L; q++) {
      for (var k = 0; k < K; k++) {
        ctx.fillStyle = k < rows[q].length ? blue(rows[q][k]) : "#e4e4e4";
        ctx.fillRect(k * cell, q * cell, cell, cell);
      }
    }
    if (tokens) {
      canvas.addEventListener("mousemove", function (event) {
        var r = canvas.getBoundingClientRect();
        var k = Math.floor((event.clientX - r.left) / r.width * K), q = Math.floor((event.clientY - r.top) / r.height * L);
        if (q < 0 || q >= L || k < 0 || k >= K) return;
        var w = k < rows[q].length ? rows[q][k] : null;
        showTip([(onHover ? onHover() + ": " : "") + "query " + q + " \u201c" + tokens[q] + "\u201d",
                 "key " + k + " \u201c" + tokens[k] + "\u201d",
                 w === null ? "masked (the future)" : "weight " + w.toFixed(3)], event);
      });
      canvas.addEventListener("mouseleave", hideTip);
    }
    return canvas;
  }

  function colorbar(parent, label) {
    var box = el("div", { "class": "colorbar" }, parent);
    el("span", { text: "0" }, box);
    var c = el("canvas", { width: 160, height: 10 }, box), ctx = c.getContext("2d");
    for (var i = 0; i < 160; i++) { ctx.fillStyle = blue(i / 159); ctx.fillRect(i, 0, 1, 10); }
    el("span", { text: "1" }, box);
    el("span", { text: label || "attention weight (each row sums to 1)" }, box);
    el("span", { text: "grey: masked (a token cannot see the future)", style: "color:#777" }, box);
    return box;
  }

  var HEAD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                     "#bcbd22", "#17becf"];
  function headColor(h) { return HEAD_COLORS[h % HEAD_COLORS.length]; }

  // bertviz's head view: the tokens twice, queries on the left, keys on the right, a line from each query
  // to each key it attends to, as opaque as the weight. heads: [[index, rows]...], one colour per head.
  function headView(parent, tokens, heads) {
    var rowH = 18, w = 300, top = 22, L = tokens.length;
    var svg = el("svg:svg", { width: w, height: top + L * rowH + 6, "class": "headview" }, parent);
    el("svg:text", { x: 4, y: 13, text: "query (attending)", fill: "#777" }, svg);
    el("svg:text", { x: w - 4, y: 13, "text-anchor": "end", text: "key (attended to)", fill: "#777" }, svg);
    var lines = el("svg:g", {}, svg), left = [], right = [];
    tokens.forEach(function (tok, i) {
      left.push(el("svg:text", { x: 100, y: top + i * rowH + 12, "text-anchor": "end", text: tok }, svg));
      right.push(el("svg:text", { x: w - 100, y: top + i * rowH + 12, text: tok }, svg));
    });
    function draw(only) {
      lines.textContent = "";
      heads.forEach(function (pair) {
        var rows = pair[1], color = headColor(pair[0]);
        rows.forEach(function (row, q) {
          if (only !== null && q !== only) return;
          row.forEach(function (weight, k) {
            if (weight < 0.02) return;
            el("svg:line", { x1: 104, y1: top + q * rowH + 8, x2: w - 104, y2: top + k * rowH + 8, stroke: color,
                             "stroke-width": 2, "stroke-opacity": Math.min(1, weight * (only === null ? 1 : 1.2)) }, lines);
          });
        });
      });
      left.forEach(function (t, i) { t.setAttribute("class", i === only ? "active" : ""); });
    }
    left.forEach(function (t, i) {
      t.addEventListener("mouseenter", function () { draw(i); });
      t.addEventListener("mouseleave", function () { draw(null); });
    });
    draw(null);
    return svg;
  }

  function data(id) { return JSON.parse(document.getElementById(id || "data").textContent); }

  return { el: el, lineChart: lineChart, heatmap: heatmap, colorbar: colorbar, headView: headView,
           headColor: headColor, showTip: showTip, hideTip: hideTip, fmt: fmt, data: data, blue: blue };
})();
