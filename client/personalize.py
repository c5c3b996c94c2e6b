"""`fedseqrec personalize`: a device fine-tunes a run's global model on its own history.

Reads RUN_DIR/model.pt (and, for a client-DP run, the device's privacy ledger in its state dir),
writes OUT/model.pt (the same format as a run's, so `fedseqrec export OUT` makes it an on-device
model) and OUT/personalization.json. Nothing is sent anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data.run_inputs import fingerprint, read_inputs, write_inputs
from common.errors import ConfigError, DataError
from common.model.checkpoint import load_model, save_model
from common.outputs import staged_output
from common.privacy.ledger import PrivacyLedger
from common.recipes import local_training
from common.run_files import PrivacyFile, read_json
from common.training.personalization import DPBudget, FineTuning, fine_tune

LEDGER_FILE = "privacy_ledger.json"  # the file a SuperNode keeps in its state dir (client/app.py)


def history_indices(history_ids: list[int], item_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Model indices of the history (oldest first) and how many of its items the catalogue lacks."""
    lookup = {int(item): index for index, item in enumerate(item_ids) if index > 0}
    known = [lookup[i] for i in history_ids if i in lookup]
    return np.asarray(known, dtype=np.int64), len(history_ids) - len(known)


def _run_delta(run_dir: Path, config: RunConfig) -> float:
    """The delta the run's epsilons are stated at (its privacy report), else its configured one."""
    path = run_dir / "privacy.json"
    if path.exists():
        return float(read_json(path, PrivacyFile, what="privacy report")["delta"])
    if config.privacy.delta > 0:
        return config.privacy.delta
    raise DataError(f"{run_dir}: no privacy.json and no delta in its config; cannot state the fine-tuning's epsilon")


def personalize(
    run_dir: Path,
    history_ids: list[int],
    out: Path,
    settings: FineTuning,
    *,
    state_dir: Path | None = None,
    noise_multiplier: float | None = None,
    max_epsilon: float = 0.0,
    history_file: Path | None = None,
) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    checkpoint = run_dir / "model.pt"
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no model file; pass the out-dir of a finished run")
    model, item_ids, metadata = load_model(checkpoint)
    flat = metadata.get("run_config")
    if not flat:
        raise DataError(f"{checkpoint}: holds no run_config; personalize needs the run's settings")
    config = RunConfig.from_flat(flat, where=f"{checkpoint} run_config")
    history, unknown = history_indices(history_ids, item_ids)
    if len(history) < 3:
        raise DataError(
            f"the history has {len(history)} item(s) in the model's catalogue ({unknown} unknown); "
            "fine-tuning needs >= 3 (training items and one held out to choose the step)"
        )
    dp = None
    if config.privacy.dp_mode == "client":
        if state_dir is None:
            raise ConfigError(
                f"{run_dir} used dp-mode = client: pass --state-dir (the device's state dir with its "
                f"{LEDGER_FILE}) so that the fine-tuning is recorded in its privacy ledger"
            )
        ledger = PrivacyLedger.load(Path(state_dir) / LEDGER_FILE, config.privacy.accountant)
        z = config.privacy.noise_multiplier if noise_multiplier is None else noise_multiplier
        dp = DPBudget(ledger, _run_delta(run_dir, config), z, max_epsilon)
    tuned, report = fine_tune(
        model, history[:-1], int(history[-1]), local_training(config, model.config.num_items), settings, dp
    )
    if dp is not None:
        dp.ledger.save(Path(state_dir) / LEDGER_FILE)  # the spend is durable before the model exists
    report.update(
        {
            "global_model": str(checkpoint.resolve()),
            "history_items": len(history),
            "unknown_items": unknown,
            "steps": settings.steps,
            "lr": settings.lr,
            "sent_anywhere": False,
        }
    )
    run_metadata = {k: v for k, v in metadata.items() if k != "run_config"}
    with staged_output(out, "--out") as stage:  # OUT appears whole (model, report, inputs), or stays as it was
        save_model(stage / "model.pt", tuned, item_ids, run_config=flat, personalized=report, **run_metadata)
        (stage / "personalization.json").write_text(json.dumps(report, indent=2))
        _record_inputs(run_dir, stage, checkpoint, history_file)
    return report


def _record_inputs(run_dir: Path, out: Path, checkpoint: Path, history_file: Path | None) -> None:
    """OUT/inputs.json: the global model and the history read here, and the run's own inputs carried
    over, so that `fedseqrec export OUT` finds the run's training data as `export RUN_DIR` does."""
    record = read_inputs(run_dir)
    inputs = dict(record["inputs"]) if record is not None else {}
    inputs["global_model"] = {"setting": "RUN_DIR", **fingerprint(checkpoint)}
    if history_file is not None:
        inputs["history"] = {"setting": "--history", **fingerprint(history_file)}
    write_inputs(out, inputs)
