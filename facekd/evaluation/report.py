"""The verification report: a self-contained HTML page and a Markdown summary.

Built from the results JSON of ``facekd eval`` (:mod:`facekd.evaluation.runner`), so
evaluation and rendering are separate steps.  For every verification set the page has

* a table of models (teacher, baseline, distilled students): accuracy ± std with and
  without flip, TAR@FAR (``not reached (FAR x %)`` where the FAR reached on the held-out
  folds is beyond the target's tolerance, see :mod:`facekd.evaluation.verification`), AUC,
  EER, parameters, MACs, latency;
* the ROC curves of all models on one plot;
* accuracy against probe resolution, as a plot and as a table with each model's
  difference to the baseline;
* the hardest false accepts and false rejects of each model as image pairs.

All images are base64 ``data:`` URIs, so the HTML file can be mailed or archived alone.
The Markdown summary has the same tables and links to the plots, written as PNG files
next to it.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from facekd.evaluation.imaging import data_uri, figure_png, new_figure
from facekd.evaluation.verification import FAR_TOLERANCE_FACTOR, far_key

ROLE_ORDER = {"teacher": 0, "baseline": 1, "distilled": 2}
DASH = "–"
RESOLUTION_CAPTION = "Accuracy % (flip) by probe size, in brackets the difference to the baseline in points"
INHERITANCE_CAPTION = ("What the student inherits: (student - plain) / (teacher - plain), accuracy % (flip) on "
                       "undegraded faces, the plain student trained on the same schedule and augmentation")
CROSS_CAPTION = ("Cross-model verification: first image of each pair embedded by the model, second by the "
                 "teacher (flip embeddings)")


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""
    html: Path
    markdown: Path
    plots: List[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- formatting

def _percent(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None or not np.isfinite(value):
        return DASH
    return f"{100 * value:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * value:.2f}"


def _count(value: Optional[float]) -> str:
    if value is None:
        return DASH
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}"
    return f"{value:g}"


def _number(value: Optional[float], fmt: str) -> str:
    return DASH if value is None or not np.isfinite(value) else format(value, fmt)


def tar_cell(entry: Optional[Dict[str, Any]]) -> str:
    """A TAR@FAR table cell from its JSON entry: ``99.10``, ``not reached (FAR 100.00 %)`` or a dash.

    Entries of results files written before the ``reached`` field count as reached.
    """
    if not entry:
        return DASH
    if entry.get("reached", True) is False:
        return f"not reached (FAR {_percent(entry.get('far_mean'))} %)"
    return _percent(entry.get("tar_mean"))


def ordered_models(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Models in report order: teacher, baseline, distilled, then unlabelled (stable)."""
    return sorted(results["models"], key=lambda m: ROLE_ORDER.get(m.get("role") or "", len(ROLE_ORDER)))


def summary_table(results: Dict[str, Any], val_name: str) -> Tuple[List[str], List[List[str]]]:
    """Header and formatted rows of the model table for one verification set."""
    fars = results.get("protocol", {}).get("far_targets", [1e-3, 1e-2])
    header = (["Model", "Role", "Accuracy % (flip)", "Accuracy % (no flip)"]
              + [f"TAR@FAR={far_key(f)} %" for f in fars]
              + ["AUC", "EER %", "Params", "MACs", "Latency ms/img"])
    rows = []
    for model in ordered_models(results):
        result = model.get("results", {}).get(val_name)
        if result is None:
            continue
        flip, plain = result["flip"], result["plain"]
        tars = [flip["tar_at_far"].get(far_key(f)) for f in fars]
        rows.append([model["label"], model.get("role") or DASH,
                     _percent(flip["accuracy_mean"], flip["accuracy_std"]),
                     _percent(plain["accuracy_mean"], plain["accuracy_std"])]
                    + [tar_cell(t) for t in tars]
                    + [_number(flip["auc"], ".4f"), _percent(flip["eer"]), _count(model.get("params")),
                       _count(model.get("macs")), _number(model.get("latency_ms"), ".2f")])
    return header, rows


#: side of the aligned faces of every pair set: a probe at this size is the undegraded face
NATIVE_SIZE = 112


def resolution_table(results: Dict[str, Any], val_name: str) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of flip accuracy at every probe size on ``val_name``.

    Cells read ``mean ± std`` over the folds, followed for every model but the baseline
    (the first model with role ``baseline``) by the difference to it in points, e.g.
    ``84.70 ± 2.53 (+2.9)``.  A model evaluated without a resolution curve (e.g. a slow
    teacher with ``resolution=false``) shows its accuracy on the undegraded faces in the
    :data:`NATIVE_SIZE` column; sizes a model was not probed at show a dash.
    """
    curves = []      # (model, {size: (mean, std)}) in report order
    for model in ordered_models(results):
        result = model.get("results", {}).get(val_name, {})
        curve = result.get("resolution")
        if curve:
            curves.append((model, dict(zip(curve["sizes"], zip(curve["accuracy_mean"], curve["accuracy_std"])))))
        elif result.get("flip"):
            curves.append((model, {NATIVE_SIZE: (result["flip"]["accuracy_mean"], result["flip"]["accuracy_std"])}))
    sizes = sorted({size for _, by_size in curves for size in by_size}, reverse=True)
    baseline = next((by_size for m, by_size in curves if m.get("role") == "baseline"), None)

    def cell(by_size: Dict[int, Tuple[float, float]], size: int) -> str:
        if size not in by_size:
            return DASH
        mean, std = by_size[size]
        text = _percent(mean, std)
        if baseline is not None and by_size is not baseline and size in baseline:
            text += f" ({100 * (mean - baseline[size][0]):+.1f})"
        return text

    header = ["Model", "Role"] + [f"{size} px" for size in sizes]
    rows = [[m["label"], m.get("role") or DASH] + [cell(by_size, size) for size in sizes]
            for m, by_size in curves]
    return header, rows


def _native_accuracy(model: Dict[str, Any], val_name: str) -> Optional[float]:
    """Flip accuracy on the undegraded faces (the resolution curve's native size, else ``flip``)."""
    result = model.get("results", {}).get(val_name) or {}
    curve = result.get("resolution")
    if curve and NATIVE_SIZE in curve["sizes"]:
        return curve["accuracy_mean"][curve["sizes"].index(NATIVE_SIZE)]
    return (result.get("flip") or {}).get("accuracy_mean")


def inheritance_table(results: Dict[str, Any], val_name: str) -> Tuple[List[str], List[List[str]]]:
    """The share of the teacher's lead each distilled model inherits on ``val_name``.

    ``(student - plain) / (teacher - plain)`` at the native size, with ``plain`` the first
    model of role ``baseline`` (trained on the same schedule and augmentation) and the
    teacher the model of role ``teacher``.  No rows without both, or when the teacher does
    not lead the plain student.
    """
    header = ["Model", f"Accuracy % ({NATIVE_SIZE} px)", "Gain over plain (pt)", "Share of the teacher's lead"]
    models = ordered_models(results)
    teacher = next((m for m in models if m.get("role") == "teacher"), None)
    plain = next((m for m in models if m.get("role") == "baseline"), None)
    if teacher is None or plain is None:
        return header, []
    top, base = _native_accuracy(teacher, val_name), _native_accuracy(plain, val_name)
    if top is None or base is None or top <= base:
        return header, []
    rows = [[teacher["label"], _percent(top), f"{100 * (top - base):+.1f}", "100 %"],
            [plain["label"], _percent(base), "+0.0", "0 %"]]
    for model in models:
        accuracy = _native_accuracy(model, val_name)
        if model.get("role") != "distilled" or accuracy is None:
            continue
        rows.append([model["label"], _percent(accuracy), f"{100 * (accuracy - base):+.1f}",
                     f"{100 * (accuracy - base) / (top - base):.0f} %"])
    return header, rows


def cross_model_table(results: Dict[str, Any], val_name: str) -> Tuple[List[str], List[List[str]]]:
    """Cross-model verification (model probe vs teacher gallery) beside each model's own accuracy.

    Rows only for models with ``results[val_name]["cross"]`` (see
    :func:`facekd.evaluation.runner.cross_model_results`); no rows when there are none.
    """
    fars = results.get("protocol", {}).get("far_targets", [1e-3, 1e-2])
    header = (["Model", "Role", "Accuracy % (own embeddings)", "Accuracy % (probe vs teacher)"]
              + [f"TAR@FAR={far_key(f)} % (vs teacher)" for f in fars])
    rows = []
    for model in ordered_models(results):
        result = model.get("results", {}).get(val_name) or {}
        cross = result.get("cross")
        if not cross:
            continue
        own, mixed = result["flip"], cross["flip"]
        rows.append([model["label"], model.get("role") or DASH, _percent(own["accuracy_mean"], own["accuracy_std"]),
                     _percent(mixed["accuracy_mean"], mixed["accuracy_std"])]
                    + [tar_cell(mixed["tar_at_far"].get(far_key(f))) for f in fars])
    return header, rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table (cells escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def slug(name: str) -> str:
    """A file-name-safe version of a val-set name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "set"


# --------------------------------------------------------------------------- plots

def _models_with(results: Dict[str, Any], val_name: str, key: str) -> List[Tuple[str, Dict[str, Any]]]:
    return [(m["label"], m["results"][val_name]) for m in ordered_models(results)
            if m.get("results", {}).get(val_name, {}).get(key)]


def roc_plot(results: Dict[str, Any], val_name: str) -> Optional[bytes]:
    """PNG of every model's ROC on ``val_name`` (log FPR axis); None if there is none."""
    curves = _models_with(results, val_name, "flip")
    if not curves:
        return None
    figure = new_figure(7, 5)
    axes = figure.add_subplot()
    floor = 1e-4
    for label, result in curves:
        fpr, tpr = np.asarray(result["flip"]["roc"]["fpr"]), np.asarray(result["flip"]["roc"]["tpr"])
        axes.plot(np.maximum(fpr, floor), tpr, label=f"{label} (AUC {result['flip']['auc']:.4f})")
    grid = np.logspace(np.log10(floor), 0, 50)
    axes.plot(grid, grid, ":", color="grey", label="chance")
    axes.set(xscale="log", xlim=(floor, 1), ylim=(0, 1.01), xlabel="false accept rate",
             ylabel="true accept rate", title=f"ROC on {val_name} (flip embeddings)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return figure_png(figure)


def resolution_plot(results: Dict[str, Any], val_name: str) -> Optional[bytes]:
    """PNG of accuracy against probe size for every model; None if no model has the curve."""
    curves = _models_with(results, val_name, "resolution")
    if not curves:
        return None
    figure = new_figure(7, 5)
    axes = figure.add_subplot()
    sides = set()
    for label, result in curves:
        curve = result["resolution"]
        sides.add(curve["side"])
        axes.errorbar(curve["sizes"], 100 * np.asarray(curve["accuracy_mean"]),
                      yerr=100 * np.asarray(curve["accuracy_std"]), marker="o", capsize=3, label=label)
    sizes = sorted({s for _, r in curves for s in r["resolution"]["sizes"]})
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [f"{s}px" for s in sizes])
    side_text = {"both": "both images degraded", "one": "probe image degraded"}
    axes.set(xlabel="probe face size (pixels, upsampled back to 112)", ylabel="accuracy %",
             title=f"Accuracy vs resolution on {val_name} ({', '.join(side_text.get(s, s) for s in sorted(sides))})")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return figure_png(figure)


# --------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ccc} h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right;white-space:nowrap} th{background:#eef}
td:first-child,td:nth-child(2),th:first-child{text-align:left}
img.plot{max-width:680px;width:100%;margin:4px 16px 4px 0}
.plots{display:flex;flex-wrap:wrap} .meta{color:#555;font-size:.9em}
.pairs{display:flex;flex-wrap:wrap;gap:12px}
figure.pair{margin:0;border:1px solid #ccc;padding:6px;background:#fafafa}
figure.pair img{width:112px;height:112px;image-rendering:auto}
figure.pair figcaption{font-size:.78em;max-width:236px;overflow-wrap:anywhere}
"""


def _pairs_html(title: str, items: List[Dict[str, Any]], accept: bool) -> str:
    if not items:
        return f"<p class='meta'>{html.escape(title)}: none.</p>"
    cards = []
    for item in items:
        imgs = "".join(f"<img alt='{html.escape(k)}' src='{data_uri(t, 'image/jpeg')}'>"
                       for k, t in zip(item["images"], item["thumbnails"]))
        sign = "<" if accept else "≥"
        caption = (f"pair {item['pair']}: distance {item['distance']:.3f} {sign} threshold "
                   f"{item['threshold']:.2f}<br>{html.escape(item['images'][0])}<br>"
                   f"{html.escape(item['images'][1])}")
        cards.append(f"<figure class='pair'>{imgs}<figcaption>{caption}</figcaption></figure>")
    return f"<h4>{html.escape(title)}</h4><div class='pairs'>{''.join(cards)}</div>"


def _val_set_section(results: Dict[str, Any], val_set: Dict[str, Any], plots: Dict[str, bytes]) -> str:
    name = val_set["name"]
    header, rows = summary_table(results, name)
    source = "; ".join(f"{key} {val_set[key]}" for key in ("kind", "path") if val_set.get(key))
    parts = [f"<h2 id='{html.escape(slug(name))}'>{html.escape(name)}</h2>",
             f"<p class='meta'>{val_set.get('num_pairs')} pairs ({val_set.get('num_same')} same), "
             f"{val_set.get('num_images')} images{'; ' if source else ''}{html.escape(source)}</p>",
             html_table(header, rows)]
    inherit_header, inherit_rows = inheritance_table(results, name)
    if inherit_rows:
        parts[2:2] = [f"<h3>{INHERITANCE_CAPTION}</h3>", html_table(inherit_header, inherit_rows)]
    resolution_header, resolution_rows = resolution_table(results, name)
    if resolution_rows:
        parts += [f"<h3>{RESOLUTION_CAPTION}</h3>", html_table(resolution_header, resolution_rows)]
    cross_header, cross_rows = cross_model_table(results, name)
    if cross_rows:
        parts += [f"<h3>{CROSS_CAPTION}</h3>", html_table(cross_header, cross_rows)]
    images = "".join(f"<img class='plot' alt='{html.escape(kind)} {html.escape(name)}' src='{data_uri(png)}'>"
                     for kind, png in plots.items())
    parts.append(f"<div class='plots'>{images}</div>")
    for model in ordered_models(results):
        hardest = model.get("results", {}).get(name, {}).get("hardest")
        if not hardest:
            continue
        parts.append(f"<h3>Hardest mistakes of {html.escape(model['label'])}</h3>")
        parts.append(_pairs_html("False accepts (different people, accepted)", hardest["false_accepts"], True))
        parts.append(_pairs_html("False rejects (same person, rejected)", hardest["false_rejects"], False))
    return "\n".join(parts)


def _protocol_text(results: Dict[str, Any]) -> str:
    protocol = results.get("protocol", {})
    return (f"{protocol.get('nrof_folds', 10)}-fold cross-validation (insightface protocol: squared L2 "
            f"on L2-normalised embeddings, thresholds 0–4 step 0.01, best threshold on 9 folds applied "
            f"to the 10th); flip = embeddings of the image and its mirror summed. TAR@FAR is shown where "
            f"the FAR reached on the held-out folds is at most {FAR_TOLERANCE_FACTOR:g}x the target plus "
            f"one false accept per fold, else 'not reached'. Resolution: probes "
            f"reduced to {protocol.get('resolution_sizes')} px ({protocol.get('resolution_side')} side"
            f"{'s' if protocol.get('resolution_side') == 'both' else ''} of each pair).")


def _environment_text(results: Dict[str, Any]) -> str:
    env = results.get("environment", {})
    return ", ".join(f"{k} {v}" for k, v in env.items())


def render_html(results: Dict[str, Any], title: str = "Face verification report",
                plots: Optional[Dict[str, Dict[str, bytes]]] = None) -> str:
    """The whole self-contained page as a string (``plots``: val set -> kind -> PNG bytes)."""
    plots = plots if plots is not None else make_plots(results)
    sections = [_val_set_section(results, v, plots.get(v["name"], {})) for v in results["val_sets"]]
    toc = " · ".join(f"<a href='#{html.escape(slug(v['name']))}'>{html.escape(v['name'])}</a>"
                     for v in results["val_sets"])
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n"
            f"<p class='meta'>Created {html.escape(str(results.get('created')))}; "
            f"{html.escape(_environment_text(results))}.<br>{html.escape(_protocol_text(results))}<br>"
            f"Latency: median ms per image at batch size "
            f"{html.escape(str(_latency_batch(results)))} on the evaluation device.</p>\n"
            f"<p>{toc}</p>\n" + "\n".join(sections) + "\n</body></html>\n")


def _latency_batch(results: Dict[str, Any]) -> Any:
    sizes = {m.get("latency_batch_size") for m in results["models"]}
    return sizes.pop() if len(sizes) == 1 else sorted(map(str, sizes))


def make_plots(results: Dict[str, Any]) -> Dict[str, Dict[str, bytes]]:
    """val set name -> {"roc": PNG, "resolution": PNG} (kinds without data left out)."""
    out: Dict[str, Dict[str, bytes]] = {}
    for val_set in results["val_sets"]:
        name = val_set["name"]
        pngs = {"roc": roc_plot(results, name), "resolution": resolution_plot(results, name)}
        out[name] = {kind: png for kind, png in pngs.items() if png is not None}
    return out


def render_markdown(results: Dict[str, Any], title: str = "Face verification report",
                    plot_files: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """The Markdown summary: tables per set and links to the plot files (``plot_files``)."""
    lines = [f"# {title}", "", f"Created {results.get('created')}; {_environment_text(results)}.", "",
             _protocol_text(results), ""]
    for val_set in results["val_sets"]:
        name = val_set["name"]
        lines += [f"## {name}", "", f"{val_set.get('num_pairs')} pairs ({val_set.get('num_same')} same).", ""]
        inherit_header, inherit_rows = inheritance_table(results, name)
        if inherit_rows:
            lines += [f"{INHERITANCE_CAPTION}:", "", markdown_table(inherit_header, inherit_rows), ""]
        lines += [markdown_table(*summary_table(results, name)), ""]
        resolution_header, resolution_rows = resolution_table(results, name)
        if resolution_rows:
            lines += [f"{RESOLUTION_CAPTION}:", "", markdown_table(resolution_header, resolution_rows), ""]
        cross_header, cross_rows = cross_model_table(results, name)
        if cross_rows:
            lines += [f"{CROSS_CAPTION}:", "", markdown_table(cross_header, cross_rows), ""]
        for kind, file in (plot_files or {}).get(name, {}).items():
            lines += [f"![{kind} on {name}]({file})", ""]
    return "\n".join(lines)


def write_report(results: Dict[str, Any], out_dir: Union[str, Path],
                 title: str = "Face verification report") -> ReportFiles:
    """Write ``report.html`` (self-contained), ``report.md`` and the plot PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = make_plots(results)
    files = ReportFiles(out_dir / "report.html", out_dir / "report.md")
    plot_files: Dict[str, Dict[str, str]] = {}
    for name, pngs in plots.items():
        for kind, png in pngs.items():
            path = out_dir / f"{kind}_{slug(name)}.png"
            path.write_bytes(png)
            files.plots.append(path)
            plot_files.setdefault(name, {})[kind] = path.name
    files.html.write_text(render_html(results, title, plots), encoding="utf-8")
    files.markdown.write_text(render_markdown(results, title, plot_files), encoding="utf-8")
    return files
