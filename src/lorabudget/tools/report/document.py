"""The report as blocks (headings, text, tables, figures), rendered to Markdown with PNGs beside it and to one
self-contained HTML page with the pictures embedded."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: tuple[int, ...] = ()  # right-aligned columns


@dataclass
class Figure:
    path: Path
    caption: str


def render_markdown(blocks: list, out: Path) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            lines.append("| " + " | ".join(cell(h) for h in b.header) + " |")
            rule = ("---:" if i in b.numeric else "---" for i in range(len(b.header)))
            lines.append("|" + "|".join(rule) + "|")
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.path.relative_to(out).as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(lines)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f5f7; text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
p.note { color: #555; }
"""


def render_html(blocks: list, title: str) -> str:
    e = html.escape
    parts = [(f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
              f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style>"
              "</head><body>")]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p class=\"note\">{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            num = ' class="num"'
            body = "".join("<tr>" + "".join(f"<td{num if i in b.numeric else ''}>{e(str(c))}</td>"
                                            for i, c in enumerate(row)) + "</tr>" for row in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")  # embedded: the file opens offline
            parts.append(f"<figure><img alt=\"{e(b.caption)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
