"""What a person sees while a command runs: one progress line in place on a terminal, plain lines
elsewhere, Flower's per-round records in the run's log file only (fedseqrec/console.py,
fedseqrec/streamed_log.py)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from fedseqrec.console import ERASE_LINE, LiveLine, TrainingProgress
from fedseqrec.streamed_log import LOG_FILE, RoundLine, StreamedLog
from server.loop import Progress

# What `flwr run --stream` printed for a small run (colours as Flower sends them, a Ray actor's
# warning, a Python warning, a client failure and an error with its traceback added).
STREAM = """\
Using SuperLink: fedseqrec-local (127.0.0.1:48303)
Successfully started run 1634689976
\x1b[92mINFO \x1b[0m:      Starting Flower Simulation
\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.
\x1b[92mINFO \x1b[0m:      fedseqrec: new run in /runs/x
/venv/lib/python3.11/site-packages/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray
  warnings.warn(
\x1b[92mINFO \x1b[0m:      configure_train: Sampled 4 nodes (out of 4)
\x1b[92mINFO \x1b[0m:      aggregate_train: Received 4 results and 0 failures
\x1b[92mINFO \x1b[0m:      fedseqrec: round 1/3  clients 4 ok, 0 failed, 0 declined  loss 4.3752  \
3.7 s/round, ETA 0m07s  val ndcg@10 0.1363 (best 0.1363)  epsilon 1.250
\x1b[92mINFO \x1b[0m:      configure_train: Sampled 4 nodes (out of 4)
\x1b[93mWARNING \x1b[0m:   round 2: client on node 77 failed: ValueError: boom
\x1b[92mINFO \x1b[0m:      aggregate_train: Received 3 results and 1 failures
\x1b[92mINFO \x1b[0m:      fedseqrec: round 2/3  clients 3 ok, 1 failed, 0 declined  loss 4.3445  \
2.2 s/round, ETA 0m02s  epsilon 1.700
\x1b[91mERROR \x1b[0m:     something the user must see
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: the reason
\x1b[92mINFO \x1b[0m:      fedseqrec: round 3/3  clients 4 ok, 0 failed, 0 declined  loss 4.3373  \
1.7 s/round, ETA 0m00s  val ndcg@10 0.1334 (best 0.1363)  epsilon 2.000
\x1b[92mINFO \x1b[0m:      fedseqrec: done; test ndcg@10 0.1015  hr@10 0.1900  -> /runs/x
\x1b[36m(ClientAppActor pid=20453)\x1b[0m \x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor
"""
PER_ROUND = ("configure_train", "aggregate_train", "Manually terminating", "FutureWarning", "Successfully started")


def _states(shown: str) -> list[str]:
    """The progress line's successive states (a redraw below a permanent line repeats a state)."""
    draws = [d for d in re.split(r"\r\x1b\[K|\r?\n", shown) if d.startswith("round ")]
    return [d for i, d in enumerate(draws) if i == 0 or d != draws[i - 1]]


def _follow(tmp_path: Path, *, tty: bool, verbose: bool = False) -> tuple[str, StreamedLog]:
    out = io.StringIO()
    log = StreamedLog(out, log_file=tmp_path / LOG_FILE, verbose=verbose, tty=tty, width=400)
    log.follow(io.StringIO(STREAM))
    return out.getvalue(), log


def test_round_lines_written_by_the_server_are_read_back_field_by_field():
    progress = Progress(total=600, done=0)
    row = {"round": 50, "replied": 256, "failed": 1, "declined": 0, "late": 2, "train-loss": 7.25}
    row |= {"validation": {"ndcg@10": 0.1234}, "epsilon": 3.5}
    parsed = RoundLine.parse("INFO :      " + progress.line(row, "ndcg@10"))
    assert (parsed.round, parsed.total, parsed.loss, parsed.epsilon) == (50, 600, 7.25, 3.5)
    assert parsed.validation == ("ndcg@10", 0.1234, 0.1234)
    assert parsed.clients == "256 ok, 1 failed, 0 declined, 2 late" and parsed.eta and parsed.per_round is not None
    plain = RoundLine.parse(progress.line({"round": 51, "replied": 1, "failed": 0, "declined": 0}, "ndcg@10"))
    assert plain.validation is None and plain.epsilon is None and plain.round == 51
    assert RoundLine.parse("fedseqrec: done; test ndcg@10 0.1") is None


def test_plain_output_shows_one_line_per_evaluation_and_what_asks_for_attention(tmp_path):
    shown, log = _follow(tmp_path, tty=False)
    lines = shown.splitlines()
    assert "\x1b" not in shown and "\r" not in shown
    rounds = [line for line in lines if line.startswith("fedseqrec: round")]
    assert [r.split()[2] for r in rounds] == ["1/3", "3/3"]  # round 2 had no evaluation
    assert "fedseqrec: new run in /runs/x" in lines and lines[-1].startswith("fedseqrec: done;")
    assert "WARNING: round 2: client on node 77 failed: ValueError: boom" in lines
    assert "ERROR: something the user must see" in lines and "RuntimeError: the reason" in lines
    assert not [line for line in lines if any(word in line for word in PER_ROUND)]
    assert (log.run_id, log.round) == (1634689976, 3)
    # everything, colours removed, in the run's log file
    logged = (tmp_path / LOG_FILE).read_text()
    assert len(logged.splitlines()) == len(STREAM.splitlines()) and "\x1b" not in logged
    assert all(word in logged for word in PER_ROUND)


def test_verbose_shows_every_record(tmp_path):
    shown, _ = _follow(tmp_path, tty=False, verbose=True)
    assert all(word in shown for word in PER_ROUND)
    assert len(re.findall(r"fedseqrec: round \d/3", shown)) == 3


def test_on_a_terminal_the_progress_line_is_redrawn_in_place(tmp_path):
    shown, _ = _follow(tmp_path, tty=True)
    assert not [word for word in PER_ROUND if word in shown]
    draws = _states(shown)
    assert [d.split()[1] for d in draws] == ["1/3", "2/3", "3/3"]
    # the last validation figure stays on the line through a round without one; epsilon so far
    assert "val ndcg@10 0.1363 (round 1, best 0.1363)" in draws[1] and "epsilon 1.700" in draws[1]
    assert "ETA 0m02s" in draws[1] and "2.2 s/round" in draws[1]
    # the round lines themselves never appear as lines; the final state stays, ended, above the result
    assert "fedseqrec: round" not in shown
    assert shown.endswith(draws[-1] + "\nfedseqrec: done; test ndcg@10 0.1015  hr@10 0.1900  -> /runs/x\n")


def test_a_permanent_line_goes_above_the_progress_line():
    out = io.StringIO()
    line = LiveLine(out, tty=True, width=80)
    line.show("round 1/9")
    line.print("WARNING: a warning")
    line.show("round 2/9")
    line.close()
    assert out.getvalue() == f"{ERASE_LINE}round 1/9{ERASE_LINE}WARNING: a warning\nround 1/9{ERASE_LINE}round 2/9\n"
    plain = io.StringIO()
    LiveLine(plain, tty=False).show("never drawn")
    assert plain.getvalue() == ""
    narrow = io.StringIO()
    LiveLine(narrow, tty=True, width=12).show("round 10/600  1.2 s/round")  # cut to the terminal's width
    assert narrow.getvalue() == f"{ERASE_LINE}round 10..."  # width - 1 characters


def test_training_progress_in_place_and_plain():
    rows = [{"epoch": 1, "loss": 5.0, "validation": {"ndcg@10": 0.05}}, {"epoch": 2, "loss": 4.0}]
    outputs = {}
    for tty in (True, False):
        out = io.StringIO()
        progress = TrainingProgress(4, "ndcg@10", line=LiveLine(out, tty=tty, width=400), redraw=0.0)
        for row in rows:
            bar = progress.start_epoch(row["epoch"], 3)
            for _ in range(3):
                bar.update(1)
            progress.end_epoch(row)
        progress.close()
        outputs[tty] = out.getvalue()
    plain = outputs[False].splitlines()
    assert len(plain) == 1 and plain[0].startswith("epoch 1/4: loss 5.0000  val ndcg@10 0.0500 (best 0.0500)")
    draws = outputs[True].split(ERASE_LINE)[1:]
    assert draws[0] == "epoch 1/4  batch 0/3" and "\n" not in "".join(draws[:-1])
    assert draws[-1].startswith("epoch 2/4  batch 3/3") and "val ndcg@10 0.0500 (epoch 1" in draws[-1]
    assert draws[-1].endswith("\n") and "ETA" in draws[-1]


# --- real commands on a pseudo-terminal
