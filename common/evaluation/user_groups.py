"""User groups for fairness reports, and each group's metrics with the gap between groups.

Two kinds of groups:
- activity (any data): quantile bins of the length of each user's training history;
- demographics (ML-1M): gender, age band and occupation from MovieLens' `users.dat`
  (`UserID::Gender::Age::Occupation::Zip-code`, see the ML-1M README).

Run-config keys: `user-groups` (auto: activity, plus demographics when a users file is known;
activity; none), `activity-groups` (number of bins) and `users-file` ("" = ML-1M's own users.dat
beside its interactions, when present).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.files import resolve_interactions
from common.errors import DataError

# Groups smaller than this are reported but left out of the gap: a handful of users' mean is noise.
MIN_GAP_USERS = 30

AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
GENDERS = {"F": "female", "M": "male"}
UNKNOWN = "not in users file"


def read_users_file(path: str | Path) -> dict[int, tuple[str, str, str]]:
    """User ID -> (gender, age band, occupation) labels; DataError naming the line if malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise DataError(
            f"{path}: users file not found; set users-file to MovieLens 1M's users.dat or user-groups = activity"
        ) from exc
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        try:
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields, expected 5")
            user, gender, age, occupation = int(fields[0]), fields[1], int(fields[2]), int(fields[3])
            labels = (GENDERS[gender], AGES[age], OCCUPATIONS[occupation])
        except (ValueError, KeyError, IndexError) as exc:
            raise DataError(
                f"{path}:{number}: not a MovieLens users.dat line (UserID::Gender::Age::Occupation::Zip-code, "
                f"gender F/M, age code in {sorted(AGES)}, occupation 0-20): {exc}"
            ) from exc
        users[user] = labels
    if not users:
        raise DataError(f"{path}: users file has no users; use MovieLens 1M's users.dat or user-groups = activity")
    return users


def demographic_groups(user_ids: np.ndarray, users: dict[int, tuple[str, str, str]]) -> dict[str, np.ndarray]:
    """Attribute -> (U,) label per user of the data (users absent from the file get UNKNOWN)."""
    labels = [users.get(int(u), (UNKNOWN,) * 3) for u in user_ids]
    return {
        attribute: np.array([row[i] for row in labels]) for i, attribute in enumerate(("gender", "age", "occupation"))
    }


def activity_groups(lengths: np.ndarray, bins: int) -> np.ndarray:
    """(U,) label per user: which of `bins` quantile bins of history length it falls in.

    Edges are quantiles of the lengths; repeated edges (many users of one length) merge bins, so a
    bin is never empty. Labels name the lengths they hold, e.g. "q1: 3-44 items"."""
    lengths = np.asarray(lengths)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))
    which = np.searchsorted(edges, lengths, side="left")  # bin j holds lengths in (edge j-1, edge j]
    labels = np.empty(len(lengths), dtype=object)
    for j in np.unique(which):
        members = lengths[which == j]
        labels[which == j] = f"q{j + 1}: {members.min()}-{members.max()} items"
    return labels.astype(str)


def group_report(per_user: dict[str, np.ndarray], labels: np.ndarray, min_users: int = MIN_GAP_USERS) -> dict:
    """Each group's user count and mean metrics, and per metric the gap between the best and the
    worst group with at least `min_users` users (which groups, and the gap's standard error
    sqrt(s_h^2 / n_h + s_l^2 / n_l): a gap within about two of them may be sampling noise)."""
    groups, spread = {}, {}
    for label in sorted(np.unique(labels)):
        members = labels == label
        groups[str(label)] = {"users": int(members.sum())} | {
            name: float(values[members].mean()) for name, values in per_user.items()
        }
        spread[str(label)] = {name: float(values[members].var()) / members.sum() for name, values in per_user.items()}
    eligible = {g: m for g, m in groups.items() if m["users"] >= min_users and g != UNKNOWN}
    gaps = {}
    if len(eligible) >= 2:
        for name in per_user:
            highest = max(eligible, key=lambda g: eligible[g][name])
            lowest = min(eligible, key=lambda g: eligible[g][name])
            gaps[name] = {
                "gap": eligible[highest][name] - eligible[lowest][name],
                "gap_se": float(np.sqrt(spread[highest][name] + spread[lowest][name])),
                "highest": highest,
                "lowest": lowest,
            }
    return {"groups": groups, "gaps": gaps, "gap_min_users": min_users}


def users_file_for(data_settings) -> Path | None:
    """The users file behind the data settings: `users-file` if set (it must then exist), else
    ML-1M's users.dat beside its interactions when it is there, else None."""
    if data_settings.users_file:
        return Path(data_settings.users_file)
    if data_settings.data != "ml-1m":
        return None
    try:
        interactions = resolve_interactions("ml-1m", data_settings.data_dir, download=False)
    except DataError:
        return None
    candidate = interactions.parent / "users.dat"
    return candidate if candidate.exists() else None


def user_groups_for(config, data) -> tuple[dict[str, np.ndarray], str]:
    """Attribute -> (U,) labels for the run config's `user-groups`, and where they came from."""
    settings = config.train
    if settings.user_groups == "none":
        return {}, "none (user-groups = none)"
    groups = {"activity": activity_groups(data.lengths() - 2, settings.activity_groups)}
    source = f"activity: {settings.activity_groups} quantile bins of training-history length"
    if settings.user_groups == "auto":
        path = users_file_for(config.data)
        if path is None:
            source += "; no users file (set users-file to a MovieLens 1M users.dat for gender, age, occupation)"
        else:
            groups |= demographic_groups(data.user_ids, read_users_file(path))
            source += f"; gender, age, occupation from {path}"
    return groups, source
