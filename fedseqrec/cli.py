"""`fedseqrec`: everything that is not `flwr run` (train, audit, export, ensemble, recommend, config)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.config import RunConfig, read_toml
from common.errors import ConfigError, FedSeqRecError
from fedseqrec.arg_types import (
    bounded,
    existing_file,
    existing_path,
    not_a_file,
    output_dir,
    quoted,
    run_dir,
    short_name,
)

# Domains of the commands' own numbers (run-config keys have theirs in common/config_domains.py).
_ID = bounded(int, -(2**63), 2**63 - 1)  # an original user ID: what a 64-bit ID column holds
_SEED = bounded(int, 0, 2**32 - 1)  # numpy's and torch's seed range

_TRAIN_GROUPS = ("data", "model", "train")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error (exit code 2)."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _add_config_flags(parser: argparse.ArgumentParser, groups: tuple[str, ...]) -> None:
    """One `--key` flag per run-config key of the given groups; values are validated by RunConfig."""
    for key, (group, f) in RunConfig.keys().items():
        if group in groups and key not in ("data",):
            default = f.default
            parser.add_argument(
                f"--{key}", dest=f"cfg:{key}", default=None, metavar=str(f.type).upper(), help=f"(default: {default!r})"
            )


def _flat_from_args(args: argparse.Namespace, groups: tuple[str, ...] | None = None) -> dict:
    """Run-config keys from --config FILE, then flags. `groups`: the only settings the command uses;
    a key of another group in the file is an error (it would be silently ignored)."""
    flat = {}
    if getattr(args, "config", None):
        flat.update(read_toml(args.config))  # a ConfigError names the file and what is wrong
        known = RunConfig.keys()
        for key in flat:
            if groups and key in known and known[key][0] not in groups:
                raise ConfigError(
                    f"{args.config}: key '{key}' is a {known[key][0]} setting, which `fedseqrec {args.command}` "
                    f"does not use; remove it (this command reads {', '.join(groups)} keys only)"
                )
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            flat[name[4:]] = value
    if getattr(args, "data", None):
        flat["data"] = args.data
    return flat


def _cmd_train(args: argparse.Namespace) -> int:
    from common.outputs import check_output_dir
    from fedseqrec.centralized import train_centralized
    from fedseqrec.launch.processes import StoppedAtOnce, StopSignals, remove_partial_files

    where = f"fedseqrec train (--config {args.config} and flags)" if args.config else "fedseqrec train"
    config = RunConfig.from_flat(_flat_from_args(args, _TRAIN_GROUPS), where=where)
    out = Path(args.out)
    check_output_dir(out, "--out")  # before the data is read and a model trained
    with StopSignals() as signals:  # Ctrl-C or `kill`: stop training but keep the best epoch's results
        try:
            metrics = train_centralized(config, out, show_progress=not args.quiet)
        except (KeyboardInterrupt, StoppedAtOnce) as exc:  # before the first validation, or while reporting
            signals.ignore()
            remove_partial_files(out)
            at_once = " at once" if isinstance(exc, StoppedAtOnce) else ""
            print(
                f"fedseqrec: training stopped{at_once} in epoch {_epochs_logged(out) + 1}/{config.train.epochs} "
                f"with nothing to report; {out} holds metrics.jsonl of the epochs run",
                file=sys.stderr,
                flush=True,
            )
            return signals.exit_code
        signals.ignore()  # the results are written: a late Ctrl-C does not cut the summary short
    k = config.train.top_k
    if metrics["interrupted"]:
        print(
            f"fedseqrec: training stopped in epoch {metrics['epochs_run']}/{config.train.epochs}; reported the "
            f"best epoch ({metrics['best_epoch']}, test ndcg@{k} {metrics['test'][f'ndcg@{k}']:.4f}) in {out} "
            "(metrics.json, model.pt)",
            file=sys.stderr,
            flush=True,
        )
        return signals.exit_code
    print(
        json.dumps(
            {
                "test": {m: metrics["test"][m] for m in (f"ndcg@{k}", f"hr@{k}", f"mrr@{k}")},
                "best_epoch": metrics["best_epoch"],
                "out": str(args.out),
            },
            indent=2,
        )
    )
    return 0


def _epochs_logged(out: Path) -> int:
    try:
        return len((out / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _cmd_federate(args: argparse.Namespace) -> int:
    from fedseqrec.launch.federate import federate

    return federate(
        args.run_config,
        args.cpus_per_client,
        args.out_dir,
        args.set,
        verbose=args.verbose,
        ray_address=args.ray_address,
    )


def _cmd_tune(args: argparse.Namespace) -> int:
    from fedseqrec.search_space import parse_search_space, read_tuning_file
    from fedseqrec.tune import TuneOptions, tune

    base, table = read_tuning_file(args.config) if args.config else ({}, None)
    base.update(_flat_from_args(argparse.Namespace(**{**vars(args), "config": None})))  # flags override the file
    if args.space:
        table = read_tuning_file(args.space)[1]
    base.pop("out-dir", None)  # each trial's run folder is set by the tuner
    RunConfig.from_flat(base, where="fedseqrec tune")
    params = parse_search_space(table, base, where=args.space or args.config or "fedseqrec tune")
    options = TuneOptions(
        args.mode,
        args.trials,
        Path(args.out),
        args.study_name,
        pruning=not args.no_pruning,
        prune_after=args.prune_after,
        timeout=args.timeout,
    )
    try:
        summary = tune(base, params, options)
    except KeyboardInterrupt:
        return 130
    return 0 if summary["complete"] else 1


def _cmd_partition(args: argparse.Namespace) -> int:
    from fedseqrec.deployment_data import write_node_files

    written = write_node_files(
        RunConfig.from_flat(_flat_from_args(args), where="fedseqrec partition"), Path(args.out), args.nodes
    )
    print("\n".join(str(p) for p in written))
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from common.audit.render import summary_lines
    from common.audit.report import run_audit

    report = run_audit(
        Path(args.run_dir), canary_guesses=args.canary_guesses, users=args.users, leakage_users=args.leakage_users
    )
    print("\n".join(summary_lines(report)))
    print(f"wrote {Path(args.run_dir) / 'audit.json'} and audit.md")
    return 1 if args.strict and report["failures"] else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from common.model.export import export_run
    from common.run_files import ExportMetadata, read_json

    paths = export_run(Path(args.run_dir), Path(args.out), int8=args.int8)
    for path in paths:
        print(f"{path}  ({path.stat().st_size:,} bytes)")
    metadata = read_json(Path(args.out) / "metadata.json", ExportMetadata, what="export metadata")
    print(f"popularity fallback: {metadata['popularity']}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from common.report import write_report

    out = write_report([Path(r) for r in args.run_dirs], Path(args.out) if args.out else None)
    print(out)
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from fedseqrec.ensemble import run_ensemble

    report = run_ensemble([Path(r) for r in args.run_dirs], Path(args.out), export=args.export, top_k=args.top_k)
    k = f"ndcg@{args.top_k}"
    chosen = report["chosen"]
    summary = {
        "chosen": chosen,
        "validation": {name: round(c["validation"][k], 4) for name, c in report["candidates"].items()}
        | {f"single:{m['run_dir']}": round(m["validation"][k], 4) for m in report["members"]},
        "test": {
            name: {m: round(v[m], 4) for m in (k, f"hr@{args.top_k}")}
            for name, v in report["test"].items()
            if v is not None
        },
        "out": str(Path(args.out) / "ensemble.json"),
    }
    if "export" in report:
        summary["export"] = report["export"]
    print(json.dumps(summary, indent=2))
    return 0


def _history_ids(path: Path, user: int | None) -> list[int]:
    """One user's item IDs from a user_id,item_id,timestamp file, oldest first."""
    from common.data.interactions import ITEM, TIME, USER, load_interactions

    frame = load_interactions(path, what="--history", columns_hint="name them user_id, item_id, timestamp")
    users = frame[USER].unique()
    if user is None:
        if len(users) > 1:
            raise FedSeqRecError(f"--history {path}: holds {len(users)} users; pick one with --user")
    elif user not in set(users.tolist()):
        raise FedSeqRecError(f"--history {path}: no rows for user {user}; pass one of its users with --user")
    else:
        frame = frame[frame[USER] == user]
    return frame.sort_values(TIME, kind="stable")[ITEM].tolist()


def _cmd_recommend(args: argparse.Namespace) -> int:
    from client.ondevice import OnDeviceRecommender, read_item_titles

    titles = read_item_titles(args.items_file) if args.items_file else {}
    recommender = OnDeviceRecommender.load(args.model, threads=args.threads)
    history = _history_ids(Path(args.history), args.user)
    result = recommender.recommend(
        history, k=args.k, rerank=args.rerank, lam=args.rerank_lambda, candidates=args.rerank_candidates
    )
    notes = [f"source: {result.source}"]
    if args.rerank != "none" and result.source != "popularity":
        notes.append(f"re-ranked: {args.rerank}, lambda {args.rerank_lambda:g}, {args.rerank_candidates} candidates")
    if result.unknown:
        notes.append(f"ignored {len(result.unknown)} item(s) outside the model's catalogue")
    if result.truncated:
        notes.append(f"used the latest {recommender.max_len} items; {result.truncated} older ones only excluded")
    explanations = {}
    if args.explain:
        explanations = {e.item: e.causes for e in recommender.explain(history, result.items, top=args.explain)}
        if result.source == "popularity":
            notes.append("no explanation: an empty history gets the most popular items")
        else:
            notes.append("explanation: drop in the item's log-probability with each history item masked (nats)")
    print("; ".join(notes), file=sys.stderr)
    for rank, item in enumerate(result.items, start=1):
        print(f"{rank}\t{item}" + (f"\t{titles.get(item, '?')}" if titles else ""))
        if result.source == "popularity":
            continue
        for cause, attribution in explanations.get(item, []):
            print(f"\tbecause\t{cause}\t{attribution:+.3f}" + (f"\t{titles.get(cause, '?')}" if titles else ""))
    return 0


def _cmd_personalize(args: argparse.Namespace) -> int:
    from client.personalize import personalize
    from common.training.personalization import FineTuning

    report = personalize(
        Path(args.run_dir),
        _history_ids(Path(args.history), args.user),
        Path(args.out),
        FineTuning(steps=args.steps, lr=args.lr, seed=args.seed),
        state_dir=Path(args.state_dir) if args.state_dir else None,
        noise_multiplier=args.noise_multiplier,
        max_epsilon=args.max_epsilon,
        history_file=Path(args.history),
    )
    losses = report["validation_loss"]
    line = (
        f"fine-tuned on {report['history_items'] - 1} items, kept step {report['best_step']}: "
        f"held-out item loss {losses[0]:.3f} -> {min(losses):.3f}"
    )
    if report["dp"]:
        line += (
            f"; DP-SGD ({report['unit_of_privacy']}-level) epsilon {report['epsilon_before']:.3g} -> "
            f"{report['epsilon_after']:.3g} (delta {report['delta']:.3g}, {report['accountant']}) in the ledger"
        )
    print(line, file=sys.stderr)
    print(Path(args.out) / "model.pt")
    return 0


def _cmd_check_device(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from client.local_data import check_device

    try:
        node_config = parse_config_args([args.node_config])
    except Exception as exc:  # flwr raises click.ClickException for a string that is not key=value TOML
        raise ConfigError(
            f"--node-config {quoted(args.node_config)}: not space-separated key=value pairs with TOML values; "
            'quote strings, e.g. data-path="/data/my.csv" client-id=17'
        ) from exc
    where = args.run_config or "run config"
    config = RunConfig.from_flat(read_toml(args.run_config) if args.run_config else {}, where=where)
    print(f"ok: {check_device(config, node_config)}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    for key, value in RunConfig().to_flat().items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def _cmd_plan_privacy(args: argparse.Namespace) -> int:
    from common.privacy.planner import plan_privacy

    if args.cohort > args.population:
        raise ConfigError(
            f"--cohort {args.cohort:g} is more than --population {args.population}: a round samples users"
        )
    plan = plan_privacy(
        population=args.population,
        cohort=args.cohort,
        rounds=args.rounds,
        epsilon=args.epsilon,
        delta=args.delta,
        accountant=args.accountant,
    )
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
        return 0
    print(
        f"user-level DP-FedAvg, Poisson sampling (add/remove one user), {plan.accountant} accounting:\n"
        f"  population {plan.population:,}, expected cohort {plan.cohort:,.0f} (q = {plan.sampling_rate:.4g}), "
        f"{plan.rounds} rounds, epsilon {plan.epsilon:g}, delta {plan.delta:.3g}\n"
        f"  noise multiplier z = {plan.noise_multiplier:.4f} (epsilon booked: {plan.epsilon_spent:.4f})\n"
        f"  noise std per coordinate of the round's average: {plan.noise_on_average:.3g} C "
        f"(z C / cohort; C = clipping-norm)\n"
        f"  rounds each user takes part in, on average: {plan.participations:.1f}\n"
        f"  FedAdam: server-tau = {plan.noise_on_average:.2g} x C (the noise on the average) moves a coordinate "
        f"that carries only noise by ~0.1 x server-lr a round (docs/private-models.md)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedseqrec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="centralized baseline on one interactions file")
    train.add_argument("--data", default=None, help="ml-1m, ml-100k, synthetic, or a CSV/TSV/Parquet path")
    train.add_argument(
        "--out", required=True, type=output_dir("--out"), help="results folder (metrics.json, model.pt, plots)"
    )
    train.add_argument("--config", help="TOML file of run-config keys (flags override it)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(train, _TRAIN_GROUPS)
    train.set_defaults(handler=_cmd_train)

    federate = commands.add_parser(
        "federate",
        help="flwr run . on a local simulation sized to the run; Ctrl-C stops it and prints the command that resumes",
    )
    federate.add_argument(
        "--run-config", help="TOML of run-config overrides (e.g. simulations/configs/ml1m-cohort.toml, the main job)"
    )
    federate.add_argument(
        "--set",
        nargs="+",
        action="extend",  # --set a=1 --set b=2 keeps both (argparse's default keeps only the last)
        default=[],
        metavar="KEY=VALUE",
        help="run-config keys over the file's (TOML values; a bare word is a string), e.g. --set augment=all",
    )
    federate.add_argument(
        "--cpus-per-client", type=bounded(int, 1, 4096), default=1, help="CPUs given to each simulated client"
    )
    federate.add_argument(
        "--ray-address",
        default=None,
        metavar="HOST:PORT",
        help="run the simulation on the existing Ray cluster whose head is there (what `ray start --head` "
        "printed; run this on a node of the cluster); default: a private Ray instance on this machine",
    )
    federate.add_argument(
        "--out-dir",
        default=None,
        type=output_dir("--out-dir"),
        help="run folder (default: the run config's out-dir, else runs/<timestamp>); "
        "the same folder resumes after its last checkpoint",
    )
    federate.add_argument(
        "--verbose",
        action="store_true",
        help="also show Flower's and Ray's records on the console (always in RUN_DIR/federate.log)",
    )
    federate.set_defaults(handler=_cmd_federate)

    tune = commands.add_parser(
        "tune",
        help="Optuna search over centralized or federated runs (objective: validation NDCG@10); "
        "running it again continues the study",
    )
    tune.add_argument("--config", help="TOML of run-config keys; its [search] table is the search space")
    tune.add_argument("--space", help="TOML whose [search] table is the search space (default: --config's)")
    tune.add_argument("--mode", choices=["centralized", "federated"], default="centralized")
    tune.add_argument(
        "--trials", type=bounded(int, 1, 100_000), default=8, help="trials to add to the study (default: 8)"
    )
    tune.add_argument(
        "--out",
        required=True,
        type=output_dir("--out"),
        help="study folder: study.db, trials/, trials.json, trials.png, best.json",
    )
    tune.add_argument(
        "--study-name",
        default="fedseqrec",
        type=short_name("--study-name"),
        help="the study's name in study.db (default: fedseqrec)",
    )
    tune.add_argument("--no-pruning", action="store_true", help="run every trial to its end")
    tune.add_argument(
        "--prune-after",
        type=bounded(int, 1, 10**6),
        default=None,
        help="epochs (centralized) or rounds (federated) before a trial may be pruned "
        "(default: 2 epochs; a third of num-server-rounds)",
    )
    tune.add_argument(
        "--timeout",
        type=bounded(float, 0, 10.0**8),
        default=0.0,
        help="seconds after which no new trial starts (default: no limit)",
    )
    tune.add_argument("--data", default=None, help="ml-1m, ml-100k, synthetic, or a file path")
    _add_config_flags(tune, ("data", "model", "train", "federation", "privacy"))
    tune.set_defaults(handler=_cmd_tune)

    partition = commands.add_parser("partition", help="split a dataset into per-node files for a deployment")
    partition.add_argument("--data", default=None, help="ml-1m, ml-100k, synthetic, or a file path")
    partition.add_argument("--nodes", type=bounded(int, 1, 10**6), required=True, help="number of SuperNodes")
    partition.add_argument(
        "--out", required=True, type=output_dir("--out"), help="folder for node-<i>.csv and catalogue.json"
    )
    partition.add_argument("--config", help="TOML file of run-config keys")
    _add_config_flags(partition, ("data", "train"))
    partition.set_defaults(handler=_cmd_partition)

    audit = commands.add_parser("audit", help="privacy audit of a finished run (audit.json, audit.md, plots)")
    audit.add_argument(
        "run_dir", metavar="RUN_DIR", type=run_dir(), help="the run's out-dir (model.pt, config.json, privacy.json)"
    )
    audit.add_argument("--strict", action="store_true", help="exit 1 when any audit check fails")
    audit.add_argument(
        "--canary-guesses",
        type=bounded(int, 0, 10**6),
        default=0,
        help="canaries guessed IN and OUT each (default: a quarter of the canaries)",
    )
    audit.add_argument(
        "--users",
        type=bounded(int, 1, 10**7),
        default=500,
        help="members and non-members each for membership inference",
    )
    audit.add_argument(
        "--leakage-users", type=bounded(int, 0, 10**5), default=10, help="users whose updates are attacked offline"
    )
    audit.set_defaults(handler=_cmd_audit)

    export = commands.add_parser("export", help="the global model as ONNX (+ int8) for on-device recommendation")
    export.add_argument("run_dir", metavar="RUN_DIR", type=run_dir(), help="the run's out-dir (model.pt, privacy.json)")
    export.add_argument(
        "--out", required=True, type=output_dir("--out"), help="folder for model.onnx, items.json, metadata.json"
    )
    export.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic quantization)")
    export.set_defaults(handler=_cmd_export)

    report = commands.add_parser(
        "report",
        help="one self-contained HTML page of finished runs: config and inputs, curves, test metrics and groups, "
        "privacy statement, audit; several runs side by side",
    )
    report.add_argument(
        "run_dirs", metavar="RUN_DIR", nargs="+", type=run_dir(), help="out-dirs of finished runs (train or federate)"
    )
    report.add_argument(
        "--out", default=None, help="the HTML file (default: RUN_DIR/report.html; ./fedseqrec-report.html for several)"
    )
    report.set_defaults(handler=_cmd_report)

    ensemble = commands.add_parser(
        "ensemble", help="fuse trained runs' scores at ranking time; choose on validation, report test once"
    )
    ensemble.add_argument(
        "run_dirs", metavar="RUN_DIR", nargs="+", type=run_dir(), help="out-dirs of finished runs (model.pt)"
    )
    ensemble.add_argument(
        "--out", required=True, type=output_dir("--out"), help="folder for ensemble.json (and export/ with --export)"
    )
    ensemble.add_argument(
        "--top-k", type=bounded(int, 1, 10**6), default=10, help="K of the NDCG@K that chooses (default: 10)"
    )
    ensemble.add_argument(
        "--export", action="store_true", help="if an ensemble wins on validation, write it as one ONNX graph"
    )
    ensemble.set_defaults(handler=_cmd_ensemble)

    recommend = commands.add_parser("recommend", help="top-k items for one history with an exported model")
    recommend.add_argument(
        "--model",
        required=True,
        type=existing_path("--model", "the folder written by `fedseqrec export RUN_DIR --out DIR`"),
        help="DIR/model.onnx or DIR/model.int8.onnx from export (DIR alone: model.onnx)",
    )
    recommend.add_argument(
        "--history", required=True, type=existing_file("--history"), help="CSV with user_id,item_id,timestamp"
    )
    recommend.add_argument("--user", type=_ID, default=None, help="the user whose rows to use (needed if several)")
    recommend.add_argument("-k", type=bounded(int, 1, 10**6), default=10, help="number of items (default: 10)")
    recommend.add_argument(
        "--items-file",
        default=None,
        type=existing_file("--items-file", "item metadata file"),
        help="MovieLens movies.dat or u.item, to print titles",
    )
    recommend.add_argument(
        "--explain",
        type=bounded(int, 0, 1000),
        nargs="?",
        const=3,
        default=0,
        metavar="N",
        help="under each item, the N history items (default 3) that raised it most (occlusion, on the device)",
    )
    recommend.add_argument(
        "--rerank",
        choices=["none", "mmr", "long-tail"],
        default="none",
        help="re-rank the model's candidates on the device: mmr (diversity, by the model's item vectors) "
        "or long-tail (exposure of the least popular items); default: none",
    )
    recommend.add_argument(
        "--rerank-lambda",
        type=bounded(float, 0, 1),
        default=0.2,
        help="weight of the re-ranking goal, 0..1 (default: 0.2)",
    )
    recommend.add_argument(
        "--rerank-candidates",
        type=bounded(int, 1, 10**6),
        default=100,
        help="model's best items re-ranked (default: 100)",
    )
    recommend.add_argument(
        "--threads", type=bounded(int, 0, 4096), default=1, help="onnxruntime intra-op threads (default: 1)"
    )
    recommend.set_defaults(handler=_cmd_recommend)

    device = commands.add_parser(
        "check-device",
        help="check a device's --node-config (data, catalogue, state folder) before starting its SuperNode",
    )
    device.add_argument(
        "--node-config",
        required=True,
        help="the string given to flower-supernode, e.g. "
        '\'data-path="/data/my.csv" catalogue-path="catalogue.json" client-id=17\'',
    )
    device.add_argument(
        "--run-config",
        default=None,
        type=existing_file("--run-config", "run-config TOML"),
        help="the federation's run-config TOML (column names)",
    )
    device.set_defaults(handler=_cmd_check_device)

    personalize = commands.add_parser(
        "personalize", help="fine-tune a run's model on one device's own history (never sent anywhere)"
    )
    personalize.add_argument("run_dir", metavar="RUN_DIR", type=run_dir(), help="the run's out-dir (model.pt)")
    personalize.add_argument(
        "--history", required=True, type=existing_file("--history"), help="CSV with user_id,item_id,timestamp"
    )
    personalize.add_argument("--user", type=_ID, default=None, help="the user whose rows to use (needed if several)")
    personalize.add_argument(
        "--out", required=True, type=output_dir("--out"), help="folder for the personalised model.pt (then: export it)"
    )
    personalize.add_argument(
        "--steps", type=bounded(int, 1, 10**5), default=20, help="most fine-tuning steps (DP: epochs); default 20"
    )
    personalize.add_argument(
        "--lr", type=bounded(float, 0, 10, low_open=True), default=1e-3, help="Adam learning rate (default: 0.001)"
    )
    personalize.add_argument("--seed", type=_SEED, default=0, help="dropout draws (never DP noise)")
    personalize.add_argument(
        "--state-dir",
        default=None,
        type=not_a_file("--state-dir"),
        help="client-DP runs: the device's state dir holding its privacy ledger",
    )
    personalize.add_argument(
        "--noise-multiplier",
        type=bounded(float, 0, 10**6),
        default=None,
        help="client-DP runs: DP-SGD noise (default: the run's)",
    )
    personalize.add_argument(
        "--max-epsilon",
        type=bounded(float, 0, 10**6),
        default=0.0,
        help="client-DP runs: the device owner's epsilon cap (0 = run's)",
    )
    personalize.set_defaults(handler=_cmd_personalize)

    plan = commands.add_parser(
        "plan-privacy", help="the noise a user-level DP recipe needs: z, the noise on the average, participations"
    )
    plan.add_argument("--population", type=bounded(int, 1, 10**10), required=True, help="users the guarantee is for")
    plan.add_argument("--cohort", type=bounded(float, 0, low_open=True), required=True, help="expected users/round")
    plan.add_argument("--rounds", type=bounded(int, 1, 10**7), required=True, help="rounds the model trains")
    plan.add_argument("--epsilon", type=bounded(float, 0, 1000, low_open=True), required=True, help="the target")
    plan.add_argument(
        "--delta", type=bounded(float, 0, 1, high_open=True), default=0.0, help="default 0: 1 / population"
    )
    plan.add_argument("--accountant", choices=("rdp", "pld"), default="rdp", help="default rdp; pld is tighter")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_cmd_plan_privacy)

    config = commands.add_parser("config", help="list every run-config key with its default")
    config.set_defaults(handler=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fedseqrec.crash import CRASH_EXIT, crash_line, one_line

    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return args.handler(args)
    except FedSeqRecError as exc:
        print(one_line(f"fedseqrec: error: {exc}"), file=sys.stderr)
        return 2
    except Exception as exc:  # the last guard: a bug, never bad input (that is a FedSeqRecError above)
        print(crash_line(exc, argv, command), file=sys.stderr, flush=True)
        return CRASH_EXIT


if __name__ == "__main__":
    sys.exit(main())
