"""HTML building blocks of the pages: escaping, tables, sections, inline images and the
document shell (inline CSS, no script, no external URL, so a page opens offline)."""

from __future__ import annotations

import base64
import html
import json
import math

from .words import f3

escape = html.escape

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  max-width:1220px;margin:0 auto;padding:16px 24px;background:#fff}
h1{font-size:24px;margin:4px 0}h2{font-size:19px;border-bottom:2px solid #4e79a7;
  padding-bottom:3px;margin-top:32px}h3{font-size:15px;margin:18px 0 6px}
.sub{color:#555;margin:0 0 8px}nav a{margin-right:12px;color:#4e79a7;text-decoration:none}
.note{color:#555;font-size:13px;margin:4px 0 10px}
.card{border:1px solid #d8dee6;border-left:5px solid #4e79a7;border-radius:4px;
  padding:8px 14px;margin:10px 0;background:#f7f9fc}
.card p{margin:4px 0}.card ul{margin:4px 0 4px 18px;padding:0}.card li{margin:3px 0}
.wrap{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
caption{text-align:left;font-weight:600;padding:4px 0;color:#333}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#eef2f7;white-space:normal;vertical-align:bottom}
tbody tr:nth-child(even){background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.good{background:#dcefdc}td.bad{background:#f7dede}
td.tag{color:#777;font-style:italic;text-align:right}
td.base{color:#555;font-style:italic;background:#f4f1f7}
td.text{white-space:normal;min-width:320px;max-width:760px}
.verdict{font-size:15px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
details{margin:6px 0}summary{cursor:pointer;color:#4e79a7}
"""


def cell(v) -> str:
    """Any config value as text: lists joined, dicts as JSON, numbers via ``f3``."""
    if isinstance(v, (list, tuple)):
        return ", ".join(cell(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    if isinstance(v, float) and math.isfinite(v) and abs(v) < 10_000:
        return f"{v:.6g}"  # settings such as a weight decay of 1e-4 keep their digits
    return f3(v)


def header_cell(text: str) -> str:
    """A column header; one with line breaks (``"\n"``) breaks there and nowhere else."""
    if "\n" not in text:
        return f"<th>{escape(text)}</th>"
    lines = (escape(line).replace(" ", "&nbsp;") for line in text.split("\n"))
    return f"<th>{'<br>'.join(lines)}</th>"


def table(header: list[str], rows: list[list], caption: str = "", numeric_from: int = 1,
          classes: list[list[str]] | None = None, fmt=f3) -> str:
    """An escaped HTML table. Cells are formatted with ``fmt`` unless already strings; from
    column ``numeric_from`` on, cells that are not words (numbers, "71%", "–") align right.
    Headers as :func:`header_cell`."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(header_cell(h) for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            word = isinstance(v, str) and v[:1].isalpha()
            cls = ["num"] if j >= numeric_from and not word else []
            if classes and classes[i][j]:
                cls.append(classes[i][j])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            text = v if isinstance(v, str) else fmt(v)
            cells.append(f"<td{attr}>{escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def kv_table(d: dict, caption: str = "") -> str:
    """Settings as a two-column table."""
    return table(["setting", "value"], [[str(k), cell(v)] for k, v in d.items()], caption,
                 numeric_from=2)


def wrapped(inner: str) -> str:
    """A block (a wide table) that scrolls sideways instead of widening the page."""
    return f"<div class='wrap'>{inner}</div>"


def card(heading: str, summary: str, sentences: list[str], verdict: bool = False) -> str:
    """A verdict card: the bold heading and summary, then one bullet per sentence."""
    lis = "".join(f"<li>{escape(s)}</li>" for s in sentences)
    p = "<p class='verdict'>" if verdict else "<p>"
    return (f"<div class='card'>{p}<b>{escape(heading)}:</b> {escape(summary)}</p>"
            f"<ul>{lis}</ul></div>")


def note(text: str) -> str:
    return f"<p class='note'>{escape(text)}</p>"


def png(data: bytes, alt: str) -> str:
    """PNG bytes as an inline ``<img>`` (base64 data URI)."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'


def section(anchor: str, title: str, body: str, intro: str = "") -> str:
    p = note(intro) if intro else ""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{p}\n{body}</section>'


def omitted(title: str, why: str) -> str:
    """The one line that stands for a section or table without data."""
    return f"<p class='note'><b>{escape(title)}</b>: not shown, {escape(why)}</p>"


def document(title: str, sub: list[str], sections: list[tuple[str, str, str | None, str]]
             ) -> str:
    """The whole page: head with inline CSS, a subtitle (``sub`` joined), in-page navigation,
    then the ``(anchor, title, body html, intro text)`` sections; a section whose body is
    ``None`` has no data and is one line, its intro saying why (:func:`omitted`)."""
    nav = " ".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, b, _ in sections
                   if b is not None)
    body = "\n".join(section(a, t, b, i) if b is not None else omitted(t, i)
                     for a, t, b, i in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{escape(title)}</h1><p class='sub'>{escape(' · '.join(sub))}</p>"
            f"<nav>{nav}</nav>\n{body}\n</body></html>\n")
