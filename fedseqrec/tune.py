"""`fedseqrec tune`: hyper-parameter search with Optuna over centralized trainings or federations.

Each trial is a whole run of the base run config with the `[search]` keys (fedseqrec/
search_space.py) set by Optuna's TPE sampler: `fedseqrec train` in this process, or the federation
the run config describes (cross-silo or the cohort engine) on Flower's simulation engine, in
process, like fedseqrec/launch/simulate.py. The objective is validation NDCG@k of the run's
validation-selected model; no trial computes test figures for selection. Once the trials of an
invocation are done, the best trial's saved model is evaluated on test, once (best.json).

The study lives in OUT/study.db (Optuna's RDB storage, SQLite): running the same command again
adds `--trials` more trials to the same study (a trial cut short by a killed tuner is run again;
one tuner process per study). Each
trial's run folder is OUT/trials/trial-NNNN; OUT/trials.json and OUT/trials.png record them all.
Trials report validation NDCG to a MedianPruner, which stops a trial below the median of earlier
trials at the same step: centralized trials every epoch, federated trials every evaluated round. A
federated trial is watched from a thread that reads its round log as the run writes it; to prune,
the watcher asks the ServerApp to stop before its next round (common.stop_request), and the run
ends cleanly there, its best model and figures written like any run's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.errors import ConfigError
from common.outputs import make_output_dir
from common.run_files import CONFIG_FILE, SummaryFile, check_sqlite, read_json
from common.stop_request import request_stop, take_stop_request
from fedseqrec.search_space import Param

MODES = ("centralized", "federated")


class FederationFailed(RuntimeError):
    """A federated trial's simulation ended without results (its log says why)."""


@dataclasses.dataclass(frozen=True)
class TuneOptions:
    mode: str  # centralized | federated
    trials: int  # trials to add in this invocation
    out: Path
    study_name: str = "fedseqrec"
    pruning: bool = True
    # epochs (centralized) or rounds (federated) before the pruner may stop a trial; slow starters need
    # more. None: 2 epochs, or a third of num-server-rounds
    prune_after: int | None = None
    timeout: float = 0.0  # > 0: no trial starts after this many seconds (the running one finishes)


_print = functools.partial(print, flush=True)


def tune(base: dict[str, Any], params: list[Param], options: TuneOptions, log=_print) -> dict:
    """Run (or continue) the study; returns the summary written to OUT/trials.json."""
    import optuna

    if options.mode not in MODES:
        raise ConfigError(f"tune: mode must be one of {', '.join(MODES)}; got {options.mode!r}")
    if options.trials < 1:
        raise ConfigError("tune: --trials must be >= 1")
    if options.prune_after is not None and options.prune_after < 1:
        raise ConfigError("tune: --prune-after must be >= 1 (epochs, or rounds for federated trials)")
    config = RunConfig.from_flat(base, where="tune base config")
    prune_after = options.prune_after or (
        2 if options.mode == "centralized" else max(1, config.federation.num_server_rounds // 3)
    )
    out = Path(options.out).resolve()
    make_output_dir(out, "--out")  # an unwritable folder is a one-line error, not a traceback
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours (below)
    storage = f"sqlite:///{out / 'study.db'}"
    key = f"ndcg@{RunConfig.from_flat(base).train.top_k}"
    identity = {
        "mode": options.mode,
        "objective": f"validation {key}",
        "base": base,
        "space": [dataclasses.asdict(p) for p in params],
    }
    check_sqlite(out / "study.db", "study database", "move it away to start a new study, or pick another --out")
    existing = optuna.study.get_all_study_names(storage)
    done_before = 0
    if options.study_name in existing:
        stored = optuna.load_study(study_name=options.study_name, storage=storage).user_attrs.get("identity")
        if json.loads(json.dumps(identity)) != stored:
            raise ConfigError(
                f"tune: study '{options.study_name}' in {out} was run with another mode, base config or search "
                "space; continue it with the same command, or pick another --out or --study-name"
            )
        done_before = _retry_dead_trials(optuna.load_study(study_name=options.study_name, storage=storage), log)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=prune_after)
        if options.pruning
        else optuna.pruners.NopPruner()
    )
    seed = RunConfig.from_flat(base).train.seed
    study = optuna.create_study(
        study_name=options.study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        # seeded by the trial count too: a resumed study does not propose its first trials again
        sampler=optuna.samplers.TPESampler(seed=seed + done_before, n_startup_trials=min(4, options.trials)),
        pruner=pruner,
    )
    if done_before == 0:
        study.set_user_attr("identity", json.loads(json.dumps(identity)))
    log(
        f"tune: study '{options.study_name}' in {out / 'study.db'}: {done_before} trial(s) so far, "
        f"{options.trials} more; {options.mode} trials, objective validation {key}"
    )
    started = time.perf_counter()
    objective = _Objective(base, params, options.mode, out, key)
    try:
        study.optimize(
            objective,
            n_trials=options.trials,
            timeout=options.timeout or None,
            # a combination the run config refuses, or a federation that broke, fails that trial only (logged)
            catch=(ConfigError, FederationFailed),
            callbacks=[_progress(log, key, done_before, options.trials)],
        )
    except KeyboardInterrupt:  # Ctrl-C: the trials done so far are still written out, then we stop
        write_results(study, out, key, time.perf_counter() - started, options.mode)
        log(f"tune: stopped; {out / 'trials.json'} holds the trials so far; the same command continues the study")
        raise
    summary = write_results(study, out, key, time.perf_counter() - started, options.mode)
    best = summary.get("best")
    if best:
        log(
            f"tune: best trial {best['number']}: validation {key} {best['value']:.4f}, test {key} "
            f"{best['test'][key]:.4f}, hr@{key.split('@')[1]} {best['test']['hr@' + key.split('@')[1]]:.4f}; "
            f"{json.dumps(best['params'])}; wrote {out / 'trials.json'}, {out / 'trials.png'}, {out / 'best.json'}"
        )
    return summary


def _retry_dead_trials(study, log) -> int:
    """Trials left running by a killed tuner (one tuner per study) fail and are queued again with
    the same parameters; returns the study's trial count."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log(f"tune: trial {trial.number} was cut short by a stopped tuner; queued again with the same parameters")
    return len(study.trials)


class _Objective:
    def __init__(self, base: dict, params: list[Param], mode: str, out: Path, key: str):
        self.base, self.params, self.mode, self.out, self.key = base, params, mode, out, key

    def __call__(self, trial) -> float:
        import optuna

        values = {p.key: p.suggest(trial) for p in self.params}
        run_dir = self.out / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.relative_to(self.out)))
        flat = {**self.base, **values, "out-dir": str(run_dir)}
        config = RunConfig.from_flat(flat, where=f"trial {trial.number}")
        if self.mode == "centralized":
            from fedseqrec.centralized import train_centralized

            def report(epoch: int, value: float) -> bool:
                trial.report(value, epoch)
                return trial.should_prune()

            metrics = train_centralized(config, run_dir, show_progress=False, report_test=False, on_validation=report)
            if metrics["interrupted"]:
                raise KeyboardInterrupt  # Ctrl-C: Optuna marks the trial failed and the study stops
            trial.set_user_attr("best_epoch", metrics["best_epoch"])
            if metrics["stopped_by"] == "on_validation":
                raise optuna.TrialPruned(f"pruned at epoch {metrics['epochs_run']}")
            return float(metrics["validation"][self.key])
        from fedseqrec.launch.simulate import num_supernodes, simulate

        def report(server_round: int, value: float) -> bool:
            trial.report(value, server_round)
            return trial.should_prune()

        watcher = RoundWatcher(run_dir, self.key, report)
        watcher.start()
        try:
            simulate(flat, num_supernodes=num_supernodes(config))
        except RuntimeError as exc:
            raise FederationFailed(f"trial {trial.number}: {exc}") from exc
        finally:
            pruned_at = watcher.finish()
        if not (run_dir / "summary.json").exists():
            raise FederationFailed(f"trial {trial.number}: the federation wrote no summary.json; see its log above")
        summary = read_json(run_dir / "summary.json", SummaryFile, what="trial summary")
        trial.set_user_attr("best_round", summary["best_round"])
        if pruned_at is not None:
            trial.set_user_attr("stopped_after_round", summary["rounds"])
            raise optuna.TrialPruned(f"pruned at round {pruned_at}")
        return float(summary["validation"][self.key])


class RoundWatcher(threading.Thread):
    """Follows a running federation's round log (RUN_DIR/metrics.jsonl, rewritten atomically each
    round) and passes each validated round to `report(round, value) -> stop?`; the first True asks the
    ServerApp to stop before its next round. `finish()` reads the rows written since the last look and
    returns the round the stop was asked at, if the server took the request (None when the run ended
    on its own first: its request is withdrawn)."""

    def __init__(self, run_dir: Path, key: str, report, poll_seconds: float = 0.5):
        super().__init__(daemon=True, name="fedseqrec-round-watcher")
        self.run_dir, self.key, self.report, self.poll_seconds = Path(run_dir), key, report, poll_seconds
        self.reported: set[int] = set()
        self.stop_asked_at: int | None = None
        self._done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._done.wait(self.poll_seconds):
                self.look()
        except BaseException as exc:  # handed to finish(): a broken report must not pass silently
            self.error = exc

    def look(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "validation" not in row or row["round"] in self.reported:
                continue
            self.reported.add(row["round"])
            if self.report(row["round"], row["validation"][self.key]) and self.stop_asked_at is None:
                self.stop_asked_at = row["round"]
                request_stop(self.run_dir, f"pruned by fedseqrec tune after round {row['round']}")

    def finish(self) -> int | None:
        self._done.set()
        self.join()
        if self.error is not None:
            raise self.error
        self.look()
        withdrawn = take_stop_request(self.run_dir) is not None  # still there: the run ended first
        return None if withdrawn else self.stop_asked_at


def _progress(log, key: str, done_before: int, trials: int):
    def callback(study, trial) -> None:
        number = trial.number - done_before + 1
        reported = "last reported " if trial.state.name == "PRUNED" else ""
        value = "" if trial.value is None else f" ({reported}validation {key} {trial.value:.4f})"
        try:
            best = f" | best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:  # no complete trial yet
            best = ""
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        log(
            f"tune: trial {trial.number} ({number}/{trials}) {trial.state.name.lower()}{value}{best} | "
            f"{json.dumps(trial.params)} | {seconds:.0f} s"
        )

    return callback


def write_results(study, out: Path, key: str, seconds_this_run: float, mode: str) -> dict:
    """trials.json, trials.png and, once per best trial, its test figures in best.json."""
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            "intermediate": {str(step): value for step, value in sorted(t.intermediate_values.items())},
            **t.user_attrs,
        }
        for t in study.trials
    ]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "mode": mode,
        "objective": f"validation {key} (maximise)",
        "trials": len(rows),
        "complete": sum(r["state"] == "COMPLETE" for r in rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "trial_seconds_total": sum(r["seconds"] or 0.0 for r in rows),
        "wall_seconds_last_invocation": seconds_this_run,
    }
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs["run_dir"],
            "test": best_test(out, best.number, best.user_attrs["run_dir"]),
        }
        summary["importance"] = importances(study) if len(complete) >= 3 else {}
    summary["rows"] = rows
    (out / "trials.json").write_text(json.dumps(summary, indent=2))
    plot_trials(out / "trials.png", rows, key, summary.get("importance", {}), study.study_name)
    return summary


def best_test(out: Path, number: int, run_dir: str) -> dict:
    """Test figures of the best trial's model, computed once per best trial (cached in best.json)."""
    from common.data.load import load_sequence_data
    from common.evaluation.ranking import evaluate, model_scores
    from common.model.checkpoint import load_model

    cache = out / "best.json"
    if cache.exists():
        stored = read_json(cache, what="best trial's figures", todo="remove it; it is computed again")
        if stored.get("trial") == number and isinstance(stored.get("test"), dict):
            return stored["test"]
    folder = out / run_dir
    flat = read_json(folder / "config.json", CONFIG_FILE, what="trial's run config")
    config = RunConfig.from_flat(flat, where=str(folder / "config.json"))
    model, _, _ = load_model(folder / "model.pt")
    data = load_sequence_data(config.data)
    test = evaluate(
        model_scores(model),
        data,
        "test",
        top_k=config.train.top_k,
        mask_seen=config.train.mask_seen,
        batch_size=config.train.eval_batch_size,
    )
    cache.write_text(json.dumps({"trial": number, "run_dir": run_dir, "test": test}, indent=2))
    return test


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA) over the complete trials; {} when nothing varied."""
    import optuna

    varied = {k for t in study.trials if t.state.name == "COMPLETE" for k in t.params}
    if not varied:
        return {}
    return dict(optuna.importance.get_param_importances(study))


def plot_trials(path: Path, rows: list[dict], key: str, importance: dict[str, float], title: str) -> None:
    """Objective per trial (pruned and failed marked), the best so far, and parameter importance."""
    from common.plots import plt  # pyplot on the Agg backend, chosen once there

    panels = 2 if importance else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 1, 4), squeeze=False)
    ax = axes[0][0]
    complete = [(r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [
        (r["number"], max(r["intermediate"].values())) for r in rows if r["state"] == "PRUNED" and r["intermediate"]
    ]
    if complete:
        x, y = zip(*complete)
        ax.scatter(x, y, label="trial (validation)", zorder=3)
        ax.step(x, np.maximum.accumulate(y), where="post", color="C1", label="best so far")
    if pruned:
        x, y = zip(*pruned)
        ax.scatter(x, y, marker="x", color="grey", label="pruned (best reported)", zorder=3)
    for r in rows:
        if r["state"] == "FAIL":
            ax.axvline(r["number"], color="red", alpha=0.2)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {key}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"study {title}: {len(rows)} trials")
    if importance:
        names = list(importance)[::-1]
        axes[0][1].barh(names, [importance[n] for n in names])
        axes[0][1].set_xlabel("importance (PED-ANOVA)")
        axes[0][1].set_title("parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
