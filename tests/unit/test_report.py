"""`fedseqrec report`: one self-contained HTML page, checked in a real headless browser (Chromium
driven through chromedriver by Selenium), and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from common.data.synthetic import synthetic_interactions
from common.report import write_report
from common.report.svg import nice_ticks
from fedseqrec.cli import main

FAST = ["--quiet", "--max-len", "8", "--emb-dim", "8", "--num-layers", "1", "--epochs", "3", "--eval-batch-size", "64"]
SECTIONS = ("trained", "inputs", "curves", "test", "groups", "privacy", "audit")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small centralized runs on the same data file, one of them audited, and a federated-looking
    DP run folder assembled from them with a privacy report that lists its releases."""
    base = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDSEQREC_CACHE", str(base / "cache"))
        return _make_runs(base)


def _make_runs(base: Path) -> tuple[Path, Path, Path]:
    data = base / "interactions.csv"
    synthetic_interactions(40, 20, mean_length=9, seed=3).to_csv(data, index=False)
    first, second = base / "sasrec", base / "gru"
    assert main(["train", "--data", str(data), "--out", str(first), *FAST]) == 0
    assert main(["train", "--data", str(data), "--out", str(second), "--model", "gru", *FAST]) == 0
    assert main(["audit", str(first), "--users", "10", "--leakage-users", "1"]) == 0
    dp = base / "dp"
    dp.mkdir()
    for name in ("inputs.json", "model.pt"):
        shutil.copy(first / name, dp / name)
    config = json.loads((first / "config.json").read_text()) | {"dp-mode": "server", "num-server-rounds": 3}
    (dp / "config.json").write_text(json.dumps(config))
    metrics = json.loads((first / "metrics.json").read_text())
    rows = [
        {"round": r, "train-loss": 4.0 - r / 10, "epsilon": 1.5 * r, "validation": {"ndcg@10": 0.1 + r / 100}}
        for r in (1, 2, 3)
    ]
    (dp / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {"rounds": 3, "best_round": 3, "test": metrics["test"], "metrics_by_group": metrics["metrics_by_group"]}
    (dp / "summary.json").write_text(json.dumps(summary | {"num_users": 40, "num_items": 20}))
    privacy = {
        "dp_mode": "server",
        "mechanism": "DP-FedAvg",
        "unit": "client",
        "unit_of_privacy": "client (one client's whole contribution)",
        "adjacency": "add/remove",
        "sampling": "Poisson",
        "epsilon": 4.5,
        "delta": 0.025,
        "rounds": 3,
        "noise_randomness": "secret",
        "epsilon_by_round": [{"round": r["round"], "epsilon": r["epsilon"]} for r in rows],
        "releases": {  # the shape privacy.json gives it: groups of {name, kind, why}
            "files": [
                {"name": "model.pt", "kind": "covered", "why": "released by the mechanism"},
                {"name": "*.json", "kind": "public", "why": "settings and accounting"},
                {"name": "metrics.jsonl", "kind": "public", "why": "listed fields only"},
            ],
            "summary": [{"name": "test", "kind": "simulation-only", "why": "the simulator's copy of test items"}],
            "round_log": [{"name": "epsilon", "kind": "public", "why": "the ledger"}],
        },
    }
    (dp / "privacy.json").write_text(json.dumps(privacy))
    for name in ("audit.json", "audit.md"):
        shutil.copy(first / name, dp / name)
    from common.plots import plot_curves  # an audit plot as the audit writes them (a PNG beside audit.json)

    plot_curves(dp / "roc.png", [0.0, 0.5, 1.0], {"attack": [0.0, 0.5, 1.0]}, xlabel="FPR", title="ROC")
    (dp / "privacy.md").write_text(
        "# Privacy report\n\n- Guarantee: **(4.5, 0.025)-DP**\n\n| round | epsilon |\n|---|---|\n| 3 | 4.5 |\n"
    )
    return first, second, dp


def test_the_page_has_every_section_and_is_self_contained(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert not re.search(r"<script|<link|@import|url\(|src=\"(?!data:)", page)  # nothing fetched, nothing run
    assert page.count('<svg class="plot"') >= 5  # ndcg, hr, loss, epsilon, groups
    record = json.loads((runs[0] / "inputs.json").read_text())["inputs"]["interactions"]
    assert record["sha256"] in page and record["path"] in page
    assert "(4.5, 0.025)-DP" in page and "No differential privacy" in page
    # each section under its class, from the release list; what the list does not name says so
    test_section = page[page.index('id="test"') : page.index('id="groups"')]
    assert "summary.json &#x27;test&#x27;: <strong>simulation-only</strong>" in test_section
    groups_section = page[page.index('id="groups"') : page.index('id="privacy"')]
    assert "summary.json &#x27;metrics_by_group&#x27;: not in the release list" in groups_section
    assert "No audit check failed" in page and "data:image/png;base64," in page  # the audit's ROC plot


def test_one_run_writes_into_its_folder(runs, capsys):
    assert main(["report", str(runs[1])]) == 0
    assert (runs[1] / "report.html").is_file() and capsys.readouterr().out.strip() == str(runs[1] / "report.html")


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no such run folder"),
        ("file", "not a folder"),
        ("empty", "no config.json, so not a fedseqrec run folder"),
        ("unfinished", "no summary.json (a federation) or metrics.json"),
        ("no-curves", "no metrics.jsonl"),
        ("dp-without-report", "without privacy.json"),
        ("damaged", "not a JSON line"),
        ("out-is-a-folder", "is a folder"),
        ("out-folder-missing", "does not exist"),
        ("out-not-writable", "cannot write the report"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, case, needle):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    out = tmp_path / "report.html"
    if case == "missing":
        run = tmp_path / "nowhere"
    elif case == "file":
        run = tmp_path / "file.txt"
        run.write_text("x")
    elif case == "empty":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "unfinished":
        (run / "metrics.json").unlink()
    elif case == "no-curves":
        (run / "metrics.jsonl").unlink()
    elif case == "dp-without-report":
        config = json.loads((run / "config.json").read_text()) | {"dp-mode": "client"}
        (run / "config.json").write_text(json.dumps(config))
    elif case == "damaged":
        (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2')
    elif case == "out-is-a-folder":
        out = tmp_path
    elif case == "out-folder-missing":
        out = tmp_path / "no" / "report.html"
    elif case == "out-not-writable":
        if os.geteuid() == 0:  # root writes anywhere: a read-only file system stands in
            out = Path("/proc/report.html")
        else:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            out = locked / "report.html"
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedseqrec: error: ") and needle in err[0], err
    assert not out.is_file() or case == "out-is-a-folder"


def test_ticks_cover_the_values():
    assert nice_ticks(0.1363, 0.3245)[0] <= 0.1363 and nice_ticks(0.1363, 0.3245)[-1] >= 0.3245
    assert nice_ticks(1, 3, integer=True) == [1.0, 2.0, 3.0]
    assert len(nice_ticks(0.5, 0.5)) >= 2


# --- in a real browser


def _browser():
    """A headless Chromium through chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "no headless browser: install Chromium and its driver (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver, options, Service(executable_path=driver)


def test_every_section_and_plot_renders_in_a_headless_browser(runs, tmp_path):
    webdriver, options, service = _browser()
    out = write_report(list(runs), tmp_path / "report.html")
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(out.as_uri())
        assert browser.title.startswith("fedseqrec report")
        for section in SECTIONS:
            element = browser.find_element("id", section)
            assert element.is_displayed() and element.size["height"] > 40, section
        plots = browser.find_elements("css selector", "svg.plot")
        assert len(plots) >= 5
        for plot in plots:
            box = plot.size
            assert box["width"] > 100 and box["height"] > 50
            marks = plot.find_elements("css selector", ".series, .bar")
            assert marks, plot.get_attribute("aria-label")
            assert any(m.size["width"] > 0 or m.size["height"] > 0 for m in marks), plot.get_attribute("aria-label")
        images = browser.find_elements("css selector", "img.plot-image")
        assert images and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        releases = browser.find_elements("css selector", "table.releases tr.covered")
        assert len(releases) == 1 and releases[0].is_displayed()
        badges = browser.find_elements("css selector", ".release-classes li.simulation-only")
        assert badges and all(b.is_displayed() for b in badges)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        browser.quit()
