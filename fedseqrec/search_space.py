"""A tuning search space: the `[search]` table of a TOML file, checked against the run config.

Each entry names a run-config key and its range or choices:

    [search]
    lr = { low = 1e-4, high = 1e-2, log = true }      # float key: a float range
    num-layers = { low = 1, high = 3 }                  # int key: an int range (`step` optional)
    dropout = { low = 0.0, high = 0.5, step = 0.1 }
    augment = { choices = ["", "crop", "crop,mask"] }   # any key: a list of values

Unknown keys, fields or types, empty or reversed ranges, log ranges that reach 0, and values the
run config would refuse (each endpoint and choice is checked against the base config) are
`ConfigError`s naming the key.
"""

from __future__ import annotations

import difflib
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import RunConfig, read_toml
from common.errors import ConfigError

RESERVED = ("out-dir",)  # the tuner sets it: each trial's run folder
_FIELDS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    key: str  # the run-config key
    kind: str  # "int", "float" or "choices"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this key's value."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def read_tuning_file(path: str | Path) -> tuple[dict[str, Any], Any]:
    """(base run-config keys, the [search] table or None) of a tuning file: a flat run config plus
    a [search] table, the one table it may hold."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        read_toml(path)  # the run config's reader turns the same problem into its one-line ConfigError
        raise
    table = values.pop("search", None)
    for key, value in values.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] is a table; a tuning file holds run-config keys and [search] only")
    return values, table


def parse_search_space(table: Any, base: dict[str, Any], where: str) -> list[Param]:
    """The `[search]` table -> parameters, each validated against the run config `base`."""
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: needs a non-empty [search] table (run-config key = {{ low, high }} or choices)")
    known = RunConfig.keys()
    params = []
    for key, spec in table.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; run `fedseqrec config` to list keys"
            raise ConfigError(f"{where}: [search] key '{key}' is not a run-config key{hint}")
        if key in RESERVED:
            raise ConfigError(f"{where}: [search] key '{key}' is set by the tuner (each trial's run folder)")
        params.append(_param(key, spec, str(known[key][1].type), where))
    for param in params:  # every value the search may propose must be one the run config accepts
        for value in param.choices or (param.low, param.high):
            try:
                RunConfig.from_flat({**base, param.key: value}, where=f"{where} [search] {param.key}")
            except ConfigError as exc:
                raise ConfigError(f"{where}: [search] key '{param.key}': value {value!r} is refused ({exc})") from None
    _check_corners(params, base, where)
    return params


_CORNERS = 512  # combinations checked together; beyond, a refused one still fails only its own trial


def _check_corners(params: list[Param], base: dict[str, Any], where: str) -> None:
    """Values valid alone can be refused together (cohort-engine = true with dp-mode = "client"): every
    trial drawing both would fail. Check each combination of the choices and range ends up front."""
    keys = [p.key for p in params]
    ends = [p.choices or (p.low, p.high) for p in params]
    for combo in itertools.islice(itertools.product(*ends), _CORNERS):
        try:
            RunConfig.from_flat({**base, **dict(zip(keys, combo))}, where=where)
        except ConfigError as exc:
            shown = ", ".join(f"{k} = {v!r}"[:60] for k, v in zip(keys, combo))
            reason = str(exc).removeprefix(f"{where}: ")
            raise ConfigError(
                f"{where}: [search] values valid alone are refused together ({shown}): {reason}; narrow the "
                "space (or split it into two studies) so that every combination is a valid run config"
            ) from None


def _param(key: str, spec: Any, kind: str, where: str) -> Param:
    name = f"{where}: [search] key '{key}'"
    if not isinstance(spec, dict):
        raise ConfigError(f"{name} must be a table such as {{ low = 1, high = 3 }} or {{ choices = [...] }}")
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {sorted(unknown)}; use low, high, log, step or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{name}: choices cannot be combined with low/high/log/step")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{name}: choices must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{name}: choices repeat a value")
        return Param(key, "choices", choices=tuple(choices))
    if kind not in ("int", "float"):
        raise ConfigError(f"{name} is a {kind} key: give choices = [...], not a range")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{name}: a range needs both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
        raise ConfigError(f"{name}: low, high and step must be numbers")
    if kind == "int" and any(isinstance(v, float) and not v.is_integer() for v in numbers):
        raise ConfigError(f"{name} is an int key: low, high and step must be whole numbers")
    if not isinstance(log, bool):
        raise ConfigError(f"{name}: log must be true or false")
    if not low < high:
        raise ConfigError(f"{name}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{name}: a log range needs low > 0 (got {low})")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{name}: step must be > 0 and cannot be combined with log")
    return Param(key, kind, float(low), float(high), log, None if step is None else float(step))
