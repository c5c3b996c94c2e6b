"""The report page: one self-contained HTML file (inline CSS and SVG, images as data URIs, no scripts,
no fonts or anything else fetched) built from `gather.RunData`; several runs side by side.

Sections (each a `<section class="report-section" id=...>`): what was trained and on what (config,
data, inputs with fingerprints), the curves, test metrics with beyond-accuracy figures and user
groups, the privacy statement (with privacy.json's list of releases when it has one), the audit.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import json
import math
from html import escape

from common.config import RunConfig
from common.report.gather import RunData
from common.report.markdown import to_html
from common.report.svg import Series, bar_chart, color, line_chart

ACCURACY = ("ndcg", "hr", "mrr", "precision", "recall", "f1")
BEYOND = ("coverage", "novelty", "ild", "long-tail", "gini", "popularity")
# What each DP mode protects a user from, and whom it trusts (docs/privacy.md).
PROTECTS = {
    "client": (
        "the server, and everyone who sees what the server sees or releases",
        "the user's own device (DP-SGD runs there before anything leaves it)",
    ),
    "server": (
        "whoever sees the released model (users of the model, the public, later analysts)",
        "the server, during the run (it sees each clipped update unless secure aggregation hides them)",
    ),
}
PRIVACY_FACTS = (
    ("mechanism", "Mechanism"),
    ("unit_of_privacy", "Unit of privacy"),
    ("adjacency", "Adjacency"),
    ("sampling", "Sampling"),
    ("sensitivity", "Sensitivity"),
    ("noise_randomness_note", "Noise and sampling randomness"),
    ("accountant", "Accountant"),
    ("noise_multiplier", "Noise multiplier"),
    ("target_epsilon", "Target epsilon"),
    ("clipping_norm", "Clipping norm"),
    ("max_grad_norm", "Max grad norm"),
    ("sampling_rate", "Sampling rate"),
    ("clients", "Clients"),
    ("users", "Users"),
    ("rounds", "Rounds accounted"),
    ("max_epsilon", "Budget (max-epsilon)"),
    ("stopped_early", "Stopped early"),
)
TRAINED_KEYS = {
    "federated": (
        "model", "emb-dim", "num-layers", "max-len", "item-features", "partition", "num-partitions",
        "cohort-engine", "clients-per-round", "user-sampling", "num-server-rounds", "strategy",
        "local-epochs", "local-lr", "server-lr", "secure-aggregation", "dp-mode", "seed",
    ),
    "centralized": (
        "model", "emb-dim", "num-layers", "max-len", "item-features", "epochs", "batch-size", "lr",
        "lr-schedule", "loss", "dp-mode", "seed",
    ),
}  # fmt: skip

# The files and fields each section shows, by the groups of privacy.json's release list.
SECTION_SOURCES = {
    "trained": [("files", "config.json"), ("summary", "num_users"), ("summary", "num_items"), ("summary", "rounds")],
    "inputs": [("files", "inputs.json")],
    "curves": [("files", "metrics.jsonl"), ("round_log", "validation"), ("round_log", "epsilon")],
    "test": [("summary", "test")],
    "groups": [("summary", "metrics_by_group")],
    "privacy": [("files", "privacy.json")],
    "audit": [("files", "audit.json")],
}
GROUP_FILES = {"summary": "summary.json", "round_log": "metrics.jsonl"}
CENTRALIZED_ONLY = ("epochs", "lr", "lr-schedule", "lr-warmup-epochs", "patience", "eval-every")

CSS = """
body{font-family:sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plot{max-width:100%;height:auto;border:1px solid #eee}
.note{color:#555;font-size:.9em}.warn{background:#fff3cd;border:1px solid #e0c36a;padding:.5em .8em}
.fail{background:#f8d7da;border:1px solid #d48a93;padding:.5em .8em}.ok{color:#1b6e20}
code,pre{font-family:monospace;font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
.covered{background:#e3f3e4}.public{background:#eef}.simulation-only{background:#fff3cd}
.unlisted{background:#f8d7da}.release-classes ul{margin:.2em 0}
details{margin:.5em 0}summary{cursor:pointer;color:#235}.run{margin-top:1.2em}
"""


def render(runs: list[RunData], *, version: str = "") -> str:
    """The whole page as one string."""
    labels = ", ".join(r.label for r in runs)
    parts = [
        ("trained", "What was trained, and on what", _trained),
        ("inputs", "Inputs", _inputs),
        ("curves", "Curves", _curves),
        ("test", "Test metrics", _test),
        ("groups", "User groups", _groups),
        ("privacy", "Privacy", _privacy),
        ("audit", "Audit", _audit),
    ]
    sections = [_section(ident, title, _classes(runs, ident) + build(runs)) for ident, title, build in parts]
    made = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fedseqrec report: {escape(labels)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f'<h1>fedseqrec report</h1><p class="note">{len(runs)} run(s): {escape(labels)}. Written {escape(made)}'
        f"{' by fedseqrec ' + escape(version) if version else ''} from the run folders' own files.</p>"
        + _contents()
        + "".join(sections)
        + "</body></html>\n"
    )


def _contents() -> str:
    names = [("trained", "What was trained"), ("inputs", "Inputs"), ("curves", "Curves"), ("test", "Test metrics")]
    names += [("groups", "User groups"), ("privacy", "Privacy"), ("audit", "Audit")]
    return '<nav><p class="note">' + " · ".join(f'<a href="#{i}">{escape(t)}</a>' for i, t in names) + "</p></nav>"


def _section(ident: str, title: str, body: str) -> str:
    return f'<section class="report-section" id="{ident}"><h2>{escape(title)}</h2>{body}</section>'


def _run_head(runs: list[RunData]) -> str:
    return "".join(f"<th>{_swatch(i)}{escape(r.label)}</th>" for i, r in enumerate(runs))


def _swatch(index: int) -> str:
    return f'<span class="swatch" style="background:{color(index)}"></span>'


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cell(value) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{escape(_fmt(value))}</td>' if numeric else f"<td>{escape(_fmt(value))}</td>"


def _table(head: str, rows: list[tuple[str, list]]) -> str:
    body = "".join(f"<tr><th>{escape(name)}</th>{''.join(_cell(v) for v in values)}</tr>" for name, values in rows)
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- what was trained


def _trained(runs: list[RunData]) -> str:
    keys = []
    for run in runs:
        keys += [k for k in TRAINED_KEYS[run.kind] if k not in keys]
    differing = sorted(
        k for k in set().union(*(r.config for r in runs)) if len({json.dumps(r.config.get(k)) for r in runs}) > 1
    )
    differing = [k for k in differing if k not in ("out-dir", "data")]
    keys += [k for k in differing if k not in keys]
    facts = [
        ("kind", [r.kind for r in runs]),
        ("data", [r.config.get("data") for r in runs]),
        ("users", [r.summary.get("num_users") for r in runs]),
        ("items", [r.summary.get("num_items") for r in runs]),
        ("rounds / epochs run", [r.summary.get("rounds", r.summary.get("epochs_run")) for r in runs]),
        ("chosen on validation at", [_best(r) for r in runs]),
        ("stopped early", [r.summary.get("stopped_early") or r.summary.get("stopped_by") or "no" for r in runs]),
    ]
    rows = facts + [(key, [r.config.get(key) if _applies(r, key) else None for r in runs]) for key in keys]
    html = _table(_run_head(runs), rows)
    if len(runs) > 1:
        listed = escape(", ".join(differing) or "none")
        html += f'<p class="note">Settings that differ between the runs are listed above: {listed}.</p>'
    for run in runs:
        html += f"<details><summary>Every setting of {escape(run.label)} (config.json)</summary>"
        html += _table("<th>value</th>", [(k, [v]) for k, v in sorted(run.config.items())]) + "</details>"
        if run.preprocessing:
            html += (
                f"<details><summary>Preprocessing of {escape(run.label)}</summary>{_value(run.preprocessing)}</details>"
            )
        if run.init_model:
            html += (
                f"<details><summary>Started from a previous model ({escape(run.label)})</summary>"
                f"{_value(run.init_model)}</details>"
            )
    return html


def _applies(run: RunData, key: str) -> bool:
    """Whether a setting means anything for this kind of run (a training has no rounds, a federation no epochs)."""
    group = RunConfig.keys().get(key, ("", None))[0]
    if run.kind == "centralized":
        return group in ("data", "model", "train") or key == "dp-mode"
    return key not in CENTRALIZED_ONLY


def _best(run: RunData) -> str:
    if run.kind == "federated":
        return f"round {run.summary.get('best_round')}"
    return f"epoch {run.summary.get('best_epoch')}"


# --- inputs


def _inputs(runs: list[RunData]) -> str:
    html = ""
    for i, run in enumerate(runs):
        html += f'<div class="run"><h3>{_swatch(i)}{escape(run.label)}</h3>'
        if run.inputs is None:
            synthetic = run.config.get("data") == "synthetic"
            html += (
                '<p class="note">'
                + (
                    "Synthetic data, generated in memory: no input file."
                    if synthetic
                    else "Not recorded: this run has no inputs.json (an older fedseqrec wrote it)."
                )
                + "</p></div>"
            )
            continue
        entries = run.inputs.get("inputs", {})
        if not entries:
            html += '<p class="note">No input file (synthetic data).</p></div>'
            continue
        rows = "".join(
            f"<tr><th>{escape(name)}</th><td>{escape(str(e.get('setting', '')))}</td>"
            f"<td><code>{escape(str(e.get('path')))}</code></td>"
            f'<td class="num">{escape(_fmt(e.get("size")))}</td>'
            f"<td><code>{escape(str(e.get('sha256')))}</code></td></tr>"
            for name, e in entries.items()
        )
        html += (
            "<table><thead><tr><th>input</th><th>setting</th><th>path</th><th>bytes</th><th>sha256</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            f'<p class="note">Recorded {escape(str(run.inputs.get("recorded", "")))}.</p></div>'
        )
    return html


# --- curves


def _curves(runs: list[RunData]) -> str:
    k = runs[0].top_k
    steps = {r.step for r in runs}
    xlabel = " / ".join(sorted(steps))
    plots = []
    for name in ("ndcg", "hr"):  # each run at its own K (top-k); the title names the first run's
        plots.append(
            line_chart(
                [_series(r, i, _validation(name, r.top_k)) for i, r in enumerate(runs)],
                title=f"validation {name}@{k}",
                xlabel=xlabel,
                ylabel=f"{name}@{k}",
            )
        )
    plots.append(
        line_chart(
            [_series(r, i, lambda row: row.get("train-loss", row.get("loss"))) for i, r in enumerate(runs)],
            title="training loss",
            xlabel=xlabel,
            ylabel="loss",
        )
    )
    if any(r.privacy for r in runs):
        plots.append(
            line_chart(
                [_epsilon_series(r, i) for i, r in enumerate(runs) if r.privacy],
                title="epsilon spent",
                xlabel="round",
                ylabel="epsilon",
            )
        )
    return (
        f'<p class="note">Validation on each {escape(xlabel)} that was evaluated; the test set is scored once, on the '
        "model chosen on validation.</p>" + '<div class="plots">' + "".join(plots) + "</div>"
    )


def _validation(name: str, k: int):
    return lambda row: row.get("validation", {}).get(f"{name}@{k}")


def _series(run: RunData, index: int, value) -> Series:
    xs, ys = [], []
    for row in run.rows:
        y = value(row)
        if isinstance(y, (int, float)) and not isinstance(y, bool):
            xs.append(row.get(run.step, len(xs) + 1))
            ys.append(float(y))
    return Series(run.label, xs, ys, color(index))


def _epsilon_series(run: RunData, index: int) -> Series:
    points = run.privacy.get("epsilon_by_round") or [
        {"round": row.get("round"), "epsilon": row.get("epsilon")} for row in run.rows if "epsilon" in row
    ]
    xs = [p.get("round") for p in points if isinstance(p, dict)]
    ys = [p.get("epsilon") for p in points if isinstance(p, dict)]
    return Series(run.label, xs, ys, color(index))


# --- test metrics


def _test(runs: list[RunData]) -> str:
    def rows(names):
        out = []
        for name in names:
            values = [r.summary["test"].get(f"{name}@{r.top_k}") for r in runs]
            if any(v is not None for v in values):
                out.append((f"{name}@{runs[0].top_k}", values))
        return out

    html = "<h3>Accuracy</h3>" + _table(_run_head(runs), rows(ACCURACY))
    html += (
        '<p class="note">Full-catalogue ranking, items already seen masked; test figures of the model chosen on '
        "validation.</p>"
    )
    html += "<h3>Beyond accuracy</h3>" + _table(_run_head(runs), rows(BEYOND))
    html += (
        '<p class="note">coverage: share of the catalogue recommended to anyone; novelty: mean self-information of the '
        "recommended items; ild: intra-list diversity; long-tail: share of recommendations from the least popular "
        "items holding 20% of interactions; gini: inequality of exposure; popularity: mean popularity of recommended "
        "items.</p>"
    )
    baseline = [r.summary.get("popularity_baseline", {}).get("test") for r in runs]
    if any(baseline):
        metric = f"ndcg@{runs[0].top_k}"
        html += "<h3>Popularity baseline</h3>" + _table(
            _run_head(runs), [(f"test {metric}", [(b or {}).get(metric) for b in baseline])]
        )
    return html


def _groups(runs: list[RunData]) -> str:
    attributes: list[str] = []
    for run in runs:
        attrs = (run.summary.get("metrics_by_group") or {}).get("attributes") or {}
        attributes += [a for a in attrs if a not in attributes]
    if not attributes:
        return '<p class="note">No user groups in these runs (user-groups = none, or federated evaluation).</p>'
    metric = f"ndcg@{runs[0].top_k}"
    html = ""
    for run in runs:
        source = (run.summary.get("metrics_by_group") or {}).get("source")
        if source:
            html += f'<p class="note">{escape(run.label)}: {escape(str(source))}</p>'
    plots = []
    for attribute in attributes:
        per_run = [
            ((r.summary.get("metrics_by_group") or {}).get("attributes") or {}).get(attribute) or {} for r in runs
        ]
        groups: list[str] = []
        for entry in per_run:
            groups += [g for g in entry.get("groups", {}) if g not in groups]
        series = [
            Series(
                r.label,
                [],
                [(e.get("groups", {}).get(g) or {}).get(f"ndcg@{r.top_k}", float("nan")) for g in groups],
                color(i),
            )
            for i, (r, e) in enumerate(zip(runs, per_run))
        ]
        plots.append(bar_chart(groups, series, title=f"test {metric} by {attribute}", ylabel=metric))
        rows = []
        for g in groups:
            rows.append((f"{g}: users", [(e.get("groups", {}).get(g) or {}).get("users") for e in per_run]))
            rows.append(
                (
                    f"{g}: {metric}",
                    [(e.get("groups", {}).get(g) or {}).get(f"ndcg@{r.top_k}") for r, e in zip(runs, per_run)],
                )
            )
        gaps = [(e.get("gaps") or {}).get(f"ndcg@{r.top_k}") or {} for r, e in zip(runs, per_run)]
        rows.append((f"largest gap in {metric}", [g.get("gap") for g in gaps]))
        rows.append(("gap's standard error", [g.get("gap_se") for g in gaps]))
        rows.append(
            ("highest / lowest group", [f"{g.get('highest')} / {g.get('lowest')}" if g else None for g in gaps])
        )
        html += f"<h3>{escape(attribute)}</h3>" + _table(_run_head(runs), rows)
    return '<div class="plots">' + "".join(plots) + "</div>" + html


# --- privacy


def _privacy(runs: list[RunData]) -> str:
    html = ""
    for i, run in enumerate(runs):
        html += f'<div class="run"><h3>{_swatch(i)}{escape(run.label)}</h3>'
        privacy = run.privacy
        if not run.dp or privacy is None:
            html += (
                '<p class="warn">No differential privacy (dp-mode = none): nothing this run released carries a '
                "DP guarantee; the model and every figure computed from it can reveal training data.</p></div>"
            )
            continue
        mode = privacy.get("dp_mode", run.config.get("dp-mode"))
        eps, delta = privacy.get("epsilon"), privacy.get("delta")
        html += (
            f"<p><strong>Guarantee: ({escape(_fmt(eps))}, {escape(_fmt(delta))})-DP</strong> after "
            f"{escape(_fmt(privacy.get('rounds')))} rounds, "
            f"per {escape(str(privacy.get('unit', privacy.get('unit_of_privacy'))))}, "
            f"{escape(str(privacy.get('adjacency')))} adjacency ({escape(str(mode))}-side DP).</p>"
        )
        if privacy.get("noise_randomness") not in (None, "secret"):
            html += (
                '<p class="warn">The noise and sampling were derived from the run seed (a simulation convenience): '
                "this guarantee does not hold against anyone who knows the seed.</p>"
            )
        if mode in PROTECTS:
            html += (
                f"<table><tbody><tr><th>protects a user from</th><td>{escape(PROTECTS[mode][0])}</td></tr>"
                f"<tr><th>trusts</th><td>{escape(PROTECTS[mode][1])}</td></tr></tbody></table>"
            )
        facts = [(label, [privacy.get(key)]) for key, label in PRIVACY_FACTS if privacy.get(key) not in (None, "")]
        html += _table("<th>this run</th>", facts)
        releases = privacy.get("releases")
        if releases:
            html += "<h4>What is covered and what is not</h4>" + _releases(releases)
        else:
            html += (
                '<p class="note">privacy.json lists no releases (what each artifact of the run is covered by); the '
                "guarantee above is for what the mechanism released: the model trained under it.</p>"
            )
        ledger = {
            k: v
            for k, v in privacy.items()
            if k in ("per_client_epsilon", "server_events", "dp_ftrl", "epsilon_by_round", "declined_clients")
        }
        if ledger:
            html += f"<details><summary>Ledger ({escape(', '.join(ledger))})</summary>{_value(ledger)}</details>"
        if run.privacy_md:
            html += f"<details><summary>privacy.md</summary>{to_html(run.privacy_md)}</details>"
        html += (
            "<details><summary>privacy.json (every field)</summary>"
            f"<pre>{escape(json.dumps(privacy, indent=2))}</pre></details>"
        )
        html += "</div>"
    return html


def _classes(runs: list[RunData], section: str) -> str:
    """Under each section's title, for each run whose privacy.json lists its releases: the class
    (covered, public, simulation-only) of every file and field the section shows."""
    html = ""
    for i, run in enumerate(runs):
        releases = (run.privacy or {}).get("releases")
        if not isinstance(releases, dict):
            continue
        items = []
        for group, name in SECTION_SOURCES[section]:
            row = _release_row(releases, group, name)
            what = name if group == "files" else f"{GROUP_FILES.get(group, group)} '{name}'"
            if row is None:
                items.append(f'<li class="unlisted">{escape(what)}: not in the release list</li>')
            else:
                kind = str(row.get("kind", ""))
                items.append(
                    f'<li class="{escape(kind)}">{escape(what)}: <strong>{escape(kind)}</strong> '
                    f"({escape(str(row.get('why', '')))})</li>"
                )
        html += (
            f'<div class="release-classes note">{_swatch(i)}{escape(run.label)}, release classes:'
            f"<ul>{''.join(items)}</ul></div>"
        )
    return html


def _release_row(releases: dict, group: str, name: str) -> dict | None:
    rows = releases.get(group)
    if not isinstance(rows, list):
        return None
    for row in rows:
        if isinstance(row, dict) and (
            row.get("name") == name or (group == "files" and fnmatch.fnmatch(name, str(row.get("name", ""))))
        ):
            return row
    return None


def _releases(releases) -> str:
    """privacy.json's releases, whatever their shape: groups of records (one table each), a list of
    records, or name -> status."""
    if isinstance(releases, dict) and all(isinstance(v, list) for v in releases.values()):
        return "".join(f"<h5>{escape(str(group))}</h5>{_releases(rows)}" for group, rows in releases.items())
    if isinstance(releases, dict):
        releases = [{"release": k, **(v if isinstance(v, dict) else {"status": v})} for k, v in releases.items()]
    if not isinstance(releases, list) or not all(isinstance(r, dict) for r in releases):
        return _value(releases)
    columns: list[str] = []
    for record in releases:
        columns += [c for c in record if c not in columns]
    body = ""
    for record in releases:
        marks = " ".join(str(v) for v in record.values() if v in ("covered", "public", "simulation-only"))
        body += (
            f'<tr class="{escape(marks)}">' + "".join(f"<td>{_value(record.get(c))}</td>" for c in columns) + "</tr>"
        )
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    return f'<table class="releases"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --- audit


def _audit(runs: list[RunData]) -> str:
    html = ""
    for i, run in enumerate(runs):
        html += f'<div class="run"><h3>{_swatch(i)}{escape(run.label)}</h3>'
        if run.audit is None:
            command = escape(f"fedseqrec audit {run.run_dir}")
            html += f'<p class="note">Not audited: <code>{command}</code> writes one.</p></div>'
            continue
        failures = run.audit.get("failures") or []
        if failures:
            html += (
                '<div class="fail"><strong>Failed checks</strong><ul>'
                + "".join(f"<li>{escape(str(f))}</li>" for f in failures)
                + "</ul></div>"
            )
        else:
            html += '<p class="ok">No audit check failed.</p>'
        facts = [
            ("claimed epsilon", [run.audit.get("claimed_epsilon")]),
            ("delta", [run.audit.get("delta")]),
            ("unit of privacy", [run.audit.get("unit_of_privacy")]),
        ]
        html += _table("<th>audit</th>", facts)
        if run.audit_md:
            html += f"<details open><summary>audit.md</summary>{to_html(run.audit_md)}</details>"
        for name, data in run.audit_plots.items():
            encoded = base64.b64encode(data).decode()
            html += (
                f'<figure><img class="plot-image" alt="{escape(name)}" src="data:image/png;base64,{encoded}">'
                f'<figcaption class="note">{escape(name)}</figcaption></figure>'
            )
        html += "</div>"
    return html


# --- any JSON value


def _value(value, depth: int = 0) -> str:
    if isinstance(value, dict):
        if depth > 2:
            return f"<pre>{escape(json.dumps(value, indent=1))}</pre>"
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{_value(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f"<table><tbody>{rows}</tbody></table>"
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value) and depth <= 2:
            columns: list[str] = []
            for record in value:
                columns += [c for c in record if c not in columns]
            head = "".join(f"<th>{escape(c)}</th>" for c in columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{_value(r.get(c), depth + 1)}</td>" for c in columns) + "</tr>" for r in value
            )
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return escape(", ".join(_fmt(v) if not isinstance(v, (list, dict)) else json.dumps(v) for v in value))
    return escape(_fmt(value))
