"""The search page: one self-contained HTML document (no external assets).

Values go in through :func:`render_page` only, HTML-escaped: a run name is a folder name, and a folder can
be called ``<script>...``."""

from __future__ import annotations

import html
import re

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}} · stitch search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f6f6f4; color: #222; }
  header { padding: 18px 24px; background: #1f2a36; color: #fff; }
  header h1 { margin: 0 0 4px; font-size: 20px; }
  header p { margin: 0; opacity: .75; font-size: 13px; }
  form { display: flex; gap: 8px; padding: 18px 24px; }
  input[type=search] { flex: 1; font-size: 16px; padding: 10px 12px; border: 1px solid #bbb; border-radius: 6px; }
  select, button { font-size: 15px; padding: 8px 12px; border-radius: 6px; border: 1px solid #bbb; }
  button { background: #2f6fb0; color: #fff; border-color: #2f6fb0; cursor: pointer; }
  #status { padding: 0 24px; font-size: 13px; color: #555; min-height: 18px; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 14px;
             padding: 18px 24px; }
  figure { margin: 0; background: #fff; border-radius: 8px; overflow: hidden; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  figure img { width: 100%; height: 130px; object-fit: cover; display: block; background: #ddd; }
  figcaption { font-size: 12px; padding: 6px 8px; color: #444; display: flex; justify-content: space-between; }
</style>
</head>
<body>
<header><h1>stitch · cross-modal search</h1>
<p>run {{TITLE}} · gallery of {{GALLERY}} images · scores: {{SCORING}}</p></header>
<form id="search-form">
  <input id="q" type="search" name="q" placeholder="Describe a picture, e.g. a dog runs on the beach" maxlength="500"
         autofocus required>
  <select id="k" name="k"><option>12</option><option selected>24</option><option>48</option></select>
  <button type="submit">Search</button>
</form>
<div id="status"></div>
<main id="results"></main>
<script>
const form = document.getElementById('search-form');
const results = document.getElementById('results');
const statusLine = document.getElementById('status');
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const q = document.getElementById('q').value;
  const k = document.getElementById('k').value;
  statusLine.textContent = 'searching…';
  const response = await fetch('/search?q=' + encodeURIComponent(q) + '&k=' + k);
  const body = await response.json();
  if (!response.ok) {
    statusLine.textContent = 'error: ' + (body.detail || response.status);
    results.innerHTML = '';
    return;
  }
  statusLine.textContent = body.results.length + ' results in ' + body.took_ms.toFixed(1) + ' ms';
  results.innerHTML = '';
  for (const hit of body.results) {
    const figure = document.createElement('figure');
    figure.className = 'hit';
    const img = document.createElement('img');
    img.src = hit.url; img.alt = hit.name; img.loading = 'lazy';
    const caption = document.createElement('figcaption');
    caption.innerHTML = '<span>#' + hit.rank + '</span><span>' + hit.score.toFixed(3) + '</span>';
    figure.append(img, caption);
    results.append(figure);
  }
});
</script>
</body>
</html>
"""


_SLOT = re.compile(r"\{\{([A-Z]+)\}\}")


def render_page(title: str, gallery: int, scoring: str = "cosine") -> str:
    """The page with its slots filled, each value escaped, in one pass (a title holding ``{{GALLERY}}``
    stays literal text instead of being filled in turn). ``scoring`` says what the numbers on the hits are."""
    values = {"TITLE": str(title), "GALLERY": str(gallery), "SCORING": scoring}
    return _SLOT.sub(lambda m: html.escape(values[m.group(1)], quote=True), PAGE)
