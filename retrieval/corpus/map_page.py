"""The self-contained HTML page of a map: one file, its script, styles and thumbnails inline.

Nothing is fetched when it opens: the Content-Security-Policy allows no source but the page's own
inline script and styles and ``data:`` images, so it works offline and from an e-mail attachment.
The points travel as JSON in a ``<script type="application/json">`` element, escaped so that no
caption can close it; captions reach the page through ``textContent`` only, never as HTML.

The page draws the points on a canvas (pan by dragging, zoom with the wheel, double-click to
reset), shows the nearest point's thumbnail, caption and colour field on hover, and lists the
colours in a legend whose entries hide or show their points when clicked.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_page"]

_STYLE = """
html,body{margin:0;height:100%;font:13px system-ui,sans-serif;color:#222;background:#fafafa;overflow:hidden}
#bar{position:fixed;top:0;left:0;right:0;height:20px;padding:6px 10px;background:#fff;border-bottom:1px solid #ddd;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
canvas{position:fixed;top:33px;left:0;cursor:crosshair}
#legend{position:fixed;right:8px;top:42px;max-height:75vh;overflow:auto;background:#fffffff0;border:1px solid #ddd;
padding:6px 8px}
#legend div{cursor:pointer;white-space:nowrap;line-height:18px}
#legend div.off{opacity:.3}
#legend i{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:50%}
#tip{position:fixed;display:none;pointer-events:none;background:#fff;border:1px solid #bbb;padding:6px;max-width:280px;
box-shadow:0 2px 6px #0003}
#tip img{display:block;max-width:128px;max-height:128px;margin-bottom:4px}
#meta{color:#666;margin-top:2px}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("points").textContent);
  var n = D.x.length, canvas = document.getElementById("plot"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip"), thumb = document.getElementById("thumb");
  var label = document.getElementById("label"), meta = document.getElementById("meta");
  var hidden = {}, view = {s: 1, tx: 0, ty: 0}, base = {s: 1, ox: 0, oy: 0}, dpr = window.devicePixelRatio || 1;
  var R = n > 20000 ? 1.5 : n > 2000 ? 2.5 : 4, drag = null, W = 0, H = 0;
  var ramp = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
  function mix(a, b, t) {
    var x = parseInt(a.slice(1), 16), y = parseInt(b.slice(1), 16), out = "#";
    for (var s = 16; s >= 0; s -= 8) {
      var v = Math.round(((x >> s) & 255) * (1 - t) + ((y >> s) & 255) * t);
      out += (v < 16 ? "0" : "") + v.toString(16);
    }
    return out;
  }
  function colour(i) {
    var c = D.c[i];
    if (D.kind === "numeric") {
      if (c === null) return "#bbbbbb";
      var k = Math.min(3.999, Math.max(0, c * 4)), j = Math.floor(k);
      return mix(ramp[j], ramp[j + 1], k - j);
    }
    return c < 0 ? "#bbbbbb" : D.palette[c % D.palette.length];
  }
  var colours = new Array(n);
  for (var i = 0; i < n; i++) colours[i] = colour(i);
  function shown(i) { return !hidden[D.kind === "numeric" ? 0 : D.c[i]]; }
  function fit() {
    W = window.innerWidth; H = window.innerHeight - 33;
    canvas.width = W * dpr; canvas.height = H * dpr; canvas.style.width = W + "px"; canvas.style.height = H + "px";
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (var i = 0; i < n; i++) {
      x0 = Math.min(x0, D.x[i]); x1 = Math.max(x1, D.x[i]); y0 = Math.min(y0, D.y[i]); y1 = Math.max(y1, D.y[i]);
    }
    var s = Math.min((W - 40) / Math.max(x1 - x0, 1e-9), (H - 40) / Math.max(y1 - y0, 1e-9));
    base = {s: s, ox: (W - s * (x1 + x0)) / 2, oy: (H + s * (y1 + y0)) / 2};
  }
  function px(i) { return (D.x[i] * base.s + base.ox) * view.s + view.tx; }
  function py(i) { return (-D.y[i] * base.s + base.oy) * view.s + view.ty; }
  function draw() {
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    ctx.globalAlpha = 0.8;
    for (var i = 0; i < n; i++) {
      if (!shown(i)) continue;
      ctx.fillStyle = colours[i];
      ctx.fillRect(px(i) - R, py(i) - R, 2 * R, 2 * R);
    }
  }
  function nearest(mx, my) {
    var best = -1, bd = 100;
    for (var i = 0; i < n; i++) {
      if (!shown(i)) continue;
      var dx = px(i) - mx, dy = py(i) - my, d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = i; }
    }
    return best;
  }
  canvas.addEventListener("mousemove", function (e) {
    if (drag) {
      view.tx = drag.tx + e.clientX - drag.x; view.ty = drag.ty + e.clientY - drag.y; draw(); return;
    }
    var i = nearest(e.clientX, e.clientY - 33);
    if (i < 0) { tip.style.display = "none"; return; }
    var t = D.t[i];
    thumb.style.display = t >= 0 ? "block" : "none";
    if (t >= 0) thumb.src = D.thumbs[t];
    label.textContent = D.labels[i];
    meta.textContent = D.meta[i];
    tip.style.display = "block";
    tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 290) + "px";
    tip.style.top = Math.min(e.clientY + 14, window.innerHeight - 190) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  canvas.addEventListener("mousedown", function (e) { drag = {x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty}; });
  window.addEventListener("mouseup", function () { drag = null; });
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var f = e.deltaY < 0 ? 1.2 : 1 / 1.2, mx = e.clientX, my = e.clientY - 33;
    view.tx = mx - (mx - view.tx) * f; view.ty = my - (my - view.ty) * f; view.s *= f; draw();
  }, {passive: false});
  canvas.addEventListener("dblclick", function () { view = {s: 1, tx: 0, ty: 0}; draw(); });
  window.addEventListener("resize", function () { fit(); draw(); });
  var legend = document.getElementById("legend");
  if (D.kind === "numeric") {
    var row = document.createElement("div");
    row.textContent = D.field + ": " + D.range[0] + " (dark) \u2013 " + D.range[1] + " (light)";
    legend.appendChild(row);
  } else if (D.categories.length) {
    D.categories.forEach(function (name, k) {
      var item = document.createElement("div"), dot = document.createElement("i");
      dot.style.background = name === D.other ? "#bbbbbb" : D.palette[k % D.palette.length];
      item.appendChild(dot);
      item.appendChild(document.createTextNode(name + " (" + D.counts[k] + ")"));
      item.addEventListener("click", function () {
        var key = name === D.other ? -1 : k;
        hidden[key] = !hidden[key]; item.className = hidden[key] ? "off" : ""; draw();
      });
      legend.appendChild(item);
    });
  } else {
    legend.style.display = "none";
  }
  fit(); draw();
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` escaped (no caption can end the element)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(title: str, subtitle: str, data: dict[str, Any]) -> str:
    """The page: ``data`` holds ``x``, ``y``, ``c``, ``kind``, ``categories``, ``counts``, ``other``,
    ``palette``, ``range``, ``field``, ``labels``, ``meta``, ``t`` (thumbnail index or -1), ``thumbs``."""
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
        f'<div id="bar"><b>{html.escape(title)}</b> {html.escape(subtitle)} · drag to pan, wheel to zoom, '
        "double-click to reset</div>\n"
        '<canvas id="plot"></canvas><div id="legend"></div>\n'
        '<div id="tip"><img id="thumb" alt=""><div id="label"></div><div id="meta"></div></div>\n'
        f'<script id="points" type="application/json">{_json_for_script(data)}</script>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )
