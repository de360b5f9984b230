"""Write an evaluation's report three ways from its JSON (:meth:`Report.to_json`): report.json (for programs),
report.md (for a repository or a terminal) and report.html (one self-contained file, every image embedded, for a
browser).

The three are rendered from the same numbers with the same formatting filters, so they cannot disagree.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

import jinja2
import markupsafe

from ..metrics import Score
from ..outputs import claim
from ..results import variant
from . import figures
from .content import Report, Section

log = logging.getLogger(__name__)

GROUPS_SHOWN, GROUP_SHOWN = 12, 4  # near-duplicate groups drawn, and images of each


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"


def _ci(value: dict) -> str:
    return f"[{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]"


def _signed(v: float) -> str:
    return f"{round(v, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def _signed_ci(value: dict) -> str:
    return f"{_signed(value['mean'])} [{_signed(value['ci95'][0])}, {_signed(value['ci95'][1])}]"


@jinja2.pass_eval_context
def _markdown_safe(context, value):
    """Where nothing is escaped (Markdown), text a user or a file name supplied loses its tags' brackets."""
    if context.autoescape or not isinstance(value, str):
        return value
    return value.replace("<", "&lt;").replace(">", "&gt;")


def _breakable(value: str) -> markupsafe.Markup:
    """A joined layer name (``stem+stage1+...+penultimate``), escaped, that may wrap after each ``+``."""
    return markupsafe.Markup("+<wbr>").join(markupsafe.escape(part) for part in str(value).split("+"))


def _environment() -> jinja2.Environment:
    """The templates' environment: every value escaped in HTML (class names, labels and paths come from the
    user's folders and manifests), and no tag in Markdown."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline.report", "templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                 default_for_string=True),
                             finalize=_markdown_safe, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(groups_shown=GROUPS_SHOWN, group_shown=GROUP_SHOWN,
                       metric_name=lambda p: "macro-F1" if p.get("metric") == "macro_f1" else "accuracy")
    env.filters.update(kind=figures.kind, f3=lambda v: f"{v:.3f}", ci=_ci, signed_ci=_signed_ci,
                       pct=lambda v: f"{100 * v:.0f}%", b64=lambda b: base64.b64encode(b).decode(),
                       breakable=_breakable)
    return env


def _figures(report: dict, sections: list[Section], out: Path) -> list[dict]:
    """Draw every section's figures (``report``: the report as JSON; ``sections``: the typed sections, with their
    arrays), write them under ``out/figures`` and return them per section."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    drawn = []
    used = set()
    for section, typed in zip(report["sections"], sections):
        slug = _slug(section["name"])
        while slug in used:
            slug += "_"
        used.add(slug)
        best = section["best"]
        pictures = {
            "accuracy": figures.accuracy_chart(section["configs"]),
            "confusion": figures.confusion_chart(best["confusion"], section["class_names"]),
            "map": figures.map_chart(typed.embeddings, typed.y, section["class_names"]),
            "coverage": figures.coverage_chart(best["coverage"], best["reject"]),
        }
        blocks = figures.blocks_chart(section["configs"])
        if blocks is not None:
            pictures["blocks"] = blocks
        files = {}
        for name, data in pictures.items():
            files[name] = f"figures/{slug}_{name}.png"
            (out / files[name]).write_bytes(data)
        section["figures"] = files
        root = Path(section["root"])
        thumbs = {gallery: [figures.thumbnail(root / item["path"]) for item in best[gallery]]
                  for gallery in ("misclassified", "label_issues")}
        thumbs["duplicates"] = [[figures.thumbnail(root / path) for path in group[:GROUP_SHOWN]]
                                for group in best.get("duplicates", {}).get("groups", [])[:GROUPS_SHOWN]]
        heatmaps = typed.details.heatmaps
        drawn.append({"png": pictures, "thumbnails": thumbs, "heatmaps": heatmaps.pictures if heatmaps else []})
    return drawn


def write_report(typed: Report, out: Path) -> dict[str, Path]:
    """Write ``out/report.{json,md,html}`` and ``out/figures/``; returns the three paths."""
    out = Path(out)
    claim(out, "evaluate")
    report = typed.to_json()
    if typed.task.several:  # its own figures: the thumbnails of the images with labels wrong
        drawn = [[figures.thumbnail(Path(s["root"]) / item["path"]) for item in s["best"]["wrong"]]
                 for s in report["sections"]]
        template = "multilabel"
    else:
        drawn, template = _figures(report, typed.sections, out), "report"
    env = _environment()
    paths = {kind: out / f"report.{kind}" for kind in ("json", "md", "html")}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(env.get_template(f"{template}.md.j2").render(report=report))
    paths["html"].write_text(env.get_template(f"{template}.html.j2").render(report=report, drawn=drawn))
    log.info("wrote %s, %s and %s", *paths.values())
    return paths


def format_summary(report: Report) -> str:
    """One line per dataset: its best configuration and accuracy (and the honest figure of choosing it)."""
    lines = []
    for section in report.sections:
        best = section.rows[0]
        r = best.result
        if report.task.several:
            lines.append(f"{section.name}: best {best.backbone} · {r.layer} · {r.classifier}, micro-F1 "
                         f"{_interval(r.scores['micro_f1'])}, mAP {_interval(r.scores['map'])}")
            continue
        kind = variant(r.classifier, r.class_weight, r.views)
        lines.append(f"{section.name}: best {best.backbone} · {r.layer} · {kind}, accuracy "
                     f"{_interval(r.scores['accuracy'])}")
        nested = getattr(section.protocol, "nested", None)
        if nested:
            lines.append(f"  chosen inside each fold instead: accuracy {_interval(nested.scores['accuracy'])}")
    return "\n".join(lines)


def _interval(score: Score) -> str:
    return f"{score.mean:.3f} [{score.ci95[0]:.3f}, {score.ci95[1]:.3f}]"
