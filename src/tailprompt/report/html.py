"""The report as one static HTML page: every table (sortable), the plots inline, an index of the runs.

No server and no network: styles and the small sorting script are inline, the figures are PNG data URIs.
The page's script records any JavaScript error in `#js-errors` and marks `<body data-rendered="ok">` once it
has run, so a headless browser can check the page (tests/report/test_html.py). `#sort=<table key>:<column
index>[:desc]` in the address sorts that table on load (the same code a header click runs).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tailprompt.report.aggregate import base_new_hm
from tailprompt.report.results import RUN_DIR_KEY, experiment_layout, split_roles
from tailprompt.report.tables import NOTE, Table, _best_means, _heading

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px;margin-bottom:4px}
nav ul{columns:2;font-size:13px}table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.label,td.label{text-align:left}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
section.table{overflow-x:auto}td.best{font-weight:bold}.caption{color:#555;max-width:1100px}
img{max-width:100%;border:1px solid #eee}
.std{color:#777}#js-errors:empty{display:none}#js-errors{color:#b00}
"""

SCRIPT = """
(function () {
  var errors = document.getElementById("js-errors");
  window.onerror = function (msg, src, line) {
    var li = document.createElement("li"); li.textContent = msg + " (line " + line + ")"; errors.appendChild(li);
  };
  function sortTable(table, col, desc) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
      if (isNaN(nx) && !isNaN(ny)) c = 1; else if (!isNaN(nx) && isNaN(ny)) c = -1;
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) th.setAttribute("aria-sort", desc ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () { sortTable(table, i, th.getAttribute("aria-sort") === "ascending"); });
    });
  });
  var m = /^#sort=([^:]+):(\\d+)(:desc)?$/.exec(decodeURIComponent(location.hash));
  if (m) { var t = document.getElementById(m[1]); if (t) sortTable(t, parseInt(m[2], 10), !!m[3]); }
  document.body.dataset.rendered = "ok";
  document.getElementById("render-status").textContent =
    "rendered " + document.querySelectorAll("table.sortable").length + " tables";
})();
"""


def render_html(tables: Sequence[Table], results: Sequence[dict[str, Any]], figures: Sequence[Path] = (),
                title: str = "tailprompt report") -> str:
    """The whole page as a string; `figures` are PNG files embedded as data URIs."""
    e = html.escape
    nav = ["<li><a href='#runs'>Runs</a></li>"]
    nav += [f"<li><a href='#sec-{e(t.key)}'>{e(_heading(t))}</a></li>" for t in tables]
    if figures:
        nav.append("<li><a href='#figures'>Figures</a></li>")
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>", f"<p class='caption'>{e(NOTE)}</p>",
        "<ul id='js-errors'></ul><p id='render-status'>not rendered (JavaScript did not run)</p>",
        f"<nav><ul>{''.join(nav)}</ul></nav>",
        "<section id='tables'><h2>Tables</h2>",
    ]
    parts += [table_html(t) for t in tables]
    parts.append("</section>")
    parts.append(runs_html(results))
    if figures:
        parts.append("<section id='figures'><h2>Figures</h2>")
        for fig in figures:
            data = base64.b64encode(fig.read_bytes()).decode("ascii")
            parts.append(f"<figure id='fig-{e(fig.stem)}'><img alt='{e(fig.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(fig.name)}</figcaption></figure>")
        parts.append("</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def table_html(table: Table) -> str:
    e = html.escape
    labels = ["Method", "τ"] if table.tau_rows else ["Method"]
    head = "".join(f"<th class='label'>{e(x)}</th>" for x in labels)
    head += "".join(f"<th>{e(c.header)}</th>" for c in table.columns)
    best = _best_means(table)
    rows = []
    for row in table.rows:
        cells = [f"<td class='label' data-sort='{e(row.method)}'>{e(row.method)}</td>"]
        if table.tau_rows:
            cells.append(f"<td class='label' data-sort='{row.tau}'>{row.tau:g}</td>")
        for cell, b in zip(row.cells, best):
            if cell.mean is None:
                cells.append("<td data-sort=''>–</td>")
                continue
            std = f" <span class='std'>± {cell.std:.2f}</span>" if cell.n > 1 else ""
            marks = f" <span class='std'>(n={cell.n})</span>" if cell.n < table.max_seeds else ""
            missing = table.missing_datasets(cell)
            if missing:
                marks += f" <span class='std'>(without {e(', '.join(missing))})</span>"
            is_best = b is not None and not missing and round(cell.mean, 2) == b
            css = " class=best" if is_best else ""
            cells.append(f"<td{css} data-sort='{cell.mean!r}'>{cell.mean:.2f}{std}{marks}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<section id='sec-{e(table.key)}' class='table'><h3>{e(_heading(table))}</h3>"
            f"<p class='caption'>{e(table.caption)}</p>"
            f"<table id='{e(table.key)}' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def runs_html(results: Sequence[dict[str, Any]]) -> str:
    """The per-run index: what ran, its headline number, where its folder is."""
    e = html.escape
    head = "".join(f"<th class='label'>{h}</th>" for h in ("Run", "Method", "Dataset", "Protocol")) + \
        "".join(f"<th>{h}</th>" for h in ("τ", "Seed", "Headline", "Folder"))
    rows = []
    for r in sorted(results, key=lambda r: (r["dataset"], r["protocol"], r["method"], -r["tau"], r["seed"])):
        headline = _headline(r)
        folder = str(r.get(RUN_DIR_KEY, ""))
        link = Path(folder).absolute().as_uri() if folder else ""  # a relative runs folder is still a file URI
        rows.append(
            f"<tr><td class='label' data-sort='{e(str(r.get('run_id')))}'>{e(str(r.get('run_id')))}</td>"
            f"<td class='label' data-sort='{e(r['method'])}'>{e(r['method'])}</td>"
            f"<td class='label' data-sort='{e(r['dataset'])}'>{e(r['dataset'])}</td>"
            f"<td class='label' data-sort='{e(r['protocol'])}'>{e(str(r.get('protocol_label') or r['protocol']))}</td>"
            f"<td data-sort='{r['tau']}'>{r['tau']:g}</td><td data-sort='{r['seed']}'>{r['seed']}</td>"
            f"<td data-sort='{'' if headline is None else headline}'>{_number(headline)}</td>"
            f"<td class='label' data-sort='{e(folder)}'><a href='{e(link)}'>"
            f"{e(Path(folder).name)}</a></td></tr>")
    return (f"<section id='runs'><h2>Runs ({len(results)})</h2><p class='caption'>One row per result.json; "
            f"Headline is the harmonic mean where the protocol has one, else the training split's accuracy.</p>"
            f"<table id='runs-index' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _headline(record: dict[str, Any]) -> float | None:
    hm = base_new_hm(record)
    if hm is not None:
        return hm
    training = experiment_layout([record]).training
    value = (record["splits"].get(training or "") or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) else None


__all__ = ["render_html", "runs_html", "split_roles", "table_html"]
