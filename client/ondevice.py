"""Next-item recommendation on the device from an exported model: onnxruntime and numpy only.

It never imports torch (a phone has none), nor anything from `common` that does: the item mapping,
left padding, masking of seen items and the popularity fallback for empty histories are here, in
numpy. Files come from `fedseqrec export`: model.onnx (or model.int8.onnx) with its metadata in
`metadata_props`, and items.json beside it.

Explanations (`explain`) are computed here too, from the same exported graph: occlusion (leave-one-
out, by masking an item in place) attribution. Why occlusion and not attention weights: it needs
nothing but the scores the graph already outputs, so it works for SASRec, GRU and LSTM alike, for the float and the int8
model, with no change to the export format; it measures what the model actually does with an item
(attention weights of one layer are not an explanation of a multi-layer model's output, and RNNs
have none); and all occluded variants run as one batched onnxruntime call. Nothing it computes
is written anywhere or sent anywhere: it returns numbers to the caller.

Re-ranking (`recommend(..., rerank=...)`) runs here too, in numpy, with the same rules as
`common.evaluation.reranking` (relevance min-max scaled within the candidates, one lambda): `mmr` trades
relevance for dissimilarity to the items already chosen, where similarity is the cosine of the
model's own item vectors (`item_vectors.npy`: the device has no co-occurrence counts, and needs
none); `long-tail` boosts the items that hold the least popular 20% of the exported popularity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.errors import ConfigError, DataError, brief

FORMAT = "fedseqrec-ondevice/1"  # as written by common.model.export (which needs torch, so it is not imported)
METADATA_KEY = "fedseqrec"


@dataclass(frozen=True)
class Recommendation:
    items: list[int]  # original item IDs, best first; never one from the history
    scores: list[float]  # model logits, or popularity counts when source = "popularity"
    source: str  # "model", "popularity", or "model-empty-history" (no popularity vector exported)
    unknown: list[int]  # history IDs outside the model's catalogue, in history order: ignored
    truncated: int  # oldest known items beyond max_len: not fed to the model, still excluded


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One thread by default: a device shares its cores with the app, and one call is ~1 ms anyway."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


RERANKERS = ("none", "mmr", "long-tail")
TAIL_SHARE = 0.2  # as common.evaluation.item_stats: the long tail holds this share of the interactions


class OnDeviceRecommender:
    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: dict,
        item_ids: np.ndarray,
        popularity: np.ndarray | None,
        folder: Path | None = None,
    ):
        self.session = session
        self.folder = folder  # where the export's other files are (item vectors, read when first needed)
        self._unit_vectors: np.ndarray | None = None
        self.metadata = metadata
        self.max_len = int(metadata["max_len"])
        self.num_items = int(metadata["num_items"])
        self.item_ids = item_ids  # (N + 1,) original ID of each index; [0] = padding
        self.popularity = popularity  # (N + 1,) or None
        self._input, self._output = metadata["input"], metadata["output"]
        self._order = np.argsort(item_ids[1:], kind="stable")  # (N,) index - 1, by original ID
        self._sorted_ids = item_ids[1:][self._order]  # (N,)

    @classmethod
    def load(cls, model_path: str | Path, *, threads: int = 1) -> OnDeviceRecommender:
        path = Path(model_path)
        if path.is_dir():  # the export folder itself: its float model
            if not (path / "model.onnx").is_file():
                raise DataError(
                    f"{path}: folder holds no model.onnx; pass the folder written by "
                    "`fedseqrec export RUN_DIR --out DIR`"
                )
            path = path / "model.onnx"
        if not path.is_file():
            raise DataError(f"{path}: no model file; create one with `fedseqrec export RUN_DIR --out DIR`")
        try:
            session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            reason = str(exc).split(" : ")[2] if str(exc).count(" : ") >= 2 else brief(exc)  # e.g. INVALID_PROTOBUF
            raise DataError(
                f"{path}: not a loadable ONNX model, truncated or corrupt (onnxruntime: {reason}); copy it again "
                "or re-export it"
            ) from exc
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise DataError(f"{path}: no '{METADATA_KEY}' metadata; export the model with `fedseqrec export`")
        try:
            metadata = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}: unreadable '{METADATA_KEY}' metadata ({exc})") from exc
        reexport = "export the run again with this version's `fedseqrec export RUN_DIR --out DIR`"
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            found = metadata.get("format") if isinstance(metadata, dict) else None
            raise DataError(f"{path}: model format {found!r}, but this runner reads {FORMAT!r}; {reexport}")
        missing = [k for k in ("max_len", "num_items", "input", "output", "items_file") if k not in metadata]
        if missing:
            raise DataError(f"{path}: its metadata lacks {', '.join(missing)}; {reexport}")
        item_ids, popularity = _read_items(path.parent / metadata["items_file"], int(metadata["num_items"]))
        width = session.get_inputs()[0].shape[1]
        if width != metadata["max_len"]:
            raise DataError(f"{path}: graph input has {width} positions, metadata says max_len {metadata['max_len']}")
        return cls(session, metadata, item_ids, popularity, path.parent)

    def scores(self, inputs: np.ndarray) -> np.ndarray:
        """(B, max_len) left-padded item indices -> (B, N) scores (index j = item j + 1)."""
        return self.session.run([self._output], {self._input: np.ascontiguousarray(inputs, dtype=np.int64)})[0]

    def to_indices(self, history: Iterable[int]) -> tuple[np.ndarray, list[int]]:
        """Known items as model indices (history order), and the unknown original IDs."""
        ids = np.asarray(history if isinstance(history, np.ndarray) else list(history))  # (H,)
        if ids.size == 0:
            ids = ids.astype(np.int64)
        elif ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise DataError(f"history must be a flat sequence of integer item IDs, got {ids.dtype} {ids.shape}")
        pos = np.searchsorted(self._sorted_ids, ids).clip(max=self.num_items - 1)  # (H,)
        known = self._sorted_ids[pos] == ids  # (H,)
        return self._order[pos[known]] + 1, [int(i) for i in ids[~known]]

    def recommend(
        self, history: Iterable[int], k: int = 10, *, rerank: str = "none", lam: float = 0.2, candidates: int = 100
    ) -> Recommendation:
        """Top-k original item IDs after a chronological history of original IDs (oldest first);
        `rerank` (mmr, long-tail) picks them from the model's `candidates` best by `lam`."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if rerank not in RERANKERS:
            raise ConfigError(f"rerank {rerank!r}: use one of {', '.join(RERANKERS)}")
        if rerank != "none" and not 0.0 <= lam <= 1.0:
            raise ConfigError(f"rerank lambda {lam}: must be in [0, 1] (0 keeps the model's order)")
        if rerank != "none" and candidates < k:
            raise ConfigError(f"rerank candidates {candidates}: fewer than k ({k}); raise it")
        indices, unknown = self.to_indices(history)
        if len(indices) == 0 and self.popularity is not None:
            scores, source = self.popularity[1:], "popularity"  # (N,)
        else:
            inputs = np.zeros((1, self.max_len), dtype=np.int64)  # (1, L) left-padded
            tail = indices[-self.max_len :]
            inputs[0, self.max_len - len(tail) :] = tail
            scores = self.scores(inputs)[0]  # (N,) float32
            source = "model" if len(indices) else "model-empty-history"
        if rerank == "none" or source == "popularity":
            top = top_k(scores, exclude=indices - 1, k=k)
        else:
            pool = top_k(scores, exclude=indices - 1, k=candidates)  # (C,) best first
            top = pool[self._rerank(rerank, pool, scores[pool], k, lam)]
        return Recommendation(
            items=[int(i) for i in self.item_ids[top + 1]],
            scores=[float(s) for s in scores[top]],
            source=source,
            unknown=unknown,
            truncated=max(0, len(indices) - self.max_len),
        )

    def _rerank(self, method: str, pool: np.ndarray, scores: np.ndarray, k: int, lam: float) -> np.ndarray:
        """Positions in `pool` (indices - 1, best first) of the k items the re-ranker keeps, in order."""
        rel = relevance(scores)  # (C,)
        if method == "long-tail":
            boosted = (1 - lam) * rel + lam * self.long_tail()[pool + 1]
            return np.argsort(-boosted, kind="stable")[:k]  # ties keep the model's order
        vectors = self.unit_vectors()[pool + 1]  # (C, D)
        # einsum, not `@`: a threaded BLAS call for a 100 x 100 product costs ~40 ms on a busy CPU
        return mmr_positions(rel, np.einsum("id,jd->ij", vectors, vectors), k, lam)

    def unit_vectors(self) -> np.ndarray:
        """(N + 1, D) the scorer's item vectors, L2-normalised: their dot products are cosines."""
        if self._unit_vectors is None:
            name = self.metadata.get("item_vectors_file")
            path = None if name is None or self.folder is None else self.folder / name
            if path is None or not path.is_file():
                raise DataError(
                    f"{path or 'item_vectors.npy'}: no item vectors beside the model, which mmr re-ranking "
                    "compares; export the run again with this version's `fedseqrec export RUN_DIR --out DIR`"
                )
            try:
                vectors = np.load(path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
                reason = brief(exc) or type(exc).__name__
                todo = "copy the file of the same export"
                raise DataError(f"{path}: unreadable item vectors ({reason}); {todo}") from exc
            if vectors.ndim != 2 or len(vectors) != self.num_items + 1:
                raise DataError(f"{path}: shape {vectors.shape}, expected ({self.num_items + 1}, D)")
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            self._unit_vectors = vectors / np.maximum(norms, 1e-12)
        return self._unit_vectors

    def long_tail(self) -> np.ndarray:
        """(N + 1,) float 0/1: the least popular items that hold TAIL_SHARE of the exported popularity."""
        if self.popularity is None:
            raise DataError(
                "long-tail re-ranking needs the popularity vector, which this export does not hold (its run "
                "had no interaction counts to export); use mmr"
            )
        counts = self.popularity
        order = np.argsort(counts[1:], kind="stable") + 1  # least popular first
        within = np.cumsum(counts[order]) <= TAIL_SHARE * counts.sum()
        tail = np.zeros(len(counts), dtype=np.float64)
        tail[order[within]] = 1.0
        return tail

    def explain(self, history: Iterable[int], items: Iterable[int], top: int = 3) -> list[Explanation]:
        """For each of `items` (original IDs, e.g. the recommended ones): the `top` history items that
        raised it most, by occlusion. Only the latest max_len known items are the model's input, so
        only they can explain; an empty input explains nothing (empty `causes`)."""
        if not isinstance(top, (int, np.integer)) or top < 1:
            raise ConfigError(f"top must be a positive integer, got {top!r}")
        targets, unknown = self.to_indices(items)
        if unknown:
            raise DataError(f"cannot explain items outside the model's catalogue: {unknown}")
        indices, _ = self.to_indices(history)
        window = indices[-self.max_len :]  # (W,) the items the model reads
        if len(window) == 0:
            return [Explanation(int(self.item_ids[t]), []) for t in targets]
        inputs, distinct = _occluded_inputs(window, self.max_len)  # (1 + V, L), (V,)
        logp = log_softmax(self.scores(inputs))[:, targets - 1]  # (1 + V, R) one onnxruntime call
        drops = logp[0] - logp[1:]  # (V, R) attribution of distinct item v to target r
        explanations = []
        for column, target in enumerate(targets):
            order = np.argsort(-drops[:, column], kind="stable")[:top]  # ties: the more recent item
            causes = [(int(self.item_ids[distinct[v]]), float(drops[v, column])) for v in order]
            explanations.append(Explanation(int(self.item_ids[target]), causes))
        return explanations


@dataclass(frozen=True)
class Explanation:
    item: int  # the explained (recommended) item, original ID
    # (history item's original ID, attribution), largest first: the drop in the explained item's
    # log-probability (nats, softmax over the whole catalogue) when that history item is masked out
    # of the model's input (replaced by padding). Positive: the item pushed the recommendation up.
    causes: list[tuple[int, float]]


def relevance(scores: np.ndarray) -> np.ndarray:
    """Scores min-max scaled to [0, 1] within the candidates (as common.evaluation.reranking); non-finite: -1."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return np.full(len(scores), -1.0)
    low, high = scores[finite].min(), scores[finite].max()
    return np.where(finite, (scores - low) / max(high - low, 1e-12), -1.0)


def mmr_positions(rel: np.ndarray, similarity: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance over C candidates: (C,) relevance, (C, C) similarity -> k positions."""
    closest = np.zeros(len(rel))  # max similarity to the chosen items so far
    chosen = np.zeros(len(rel), dtype=bool)
    picks = []
    for _ in range(min(k, len(rel))):
        gain = np.where(chosen, -np.inf, (1 - lam) * rel - lam * closest)
        pick = int(np.argmax(gain))  # first of equals: the model's order
        picks.append(pick)
        chosen[pick] = True
        closest = np.maximum(closest, similarity[pick])
    return np.asarray(picks, dtype=np.int64)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (the comparison of rows must not drown in float32 rounding)."""
    scores = scores.astype(np.float64)
    peak = scores.max(axis=-1, keepdims=True)
    return scores - peak - np.log(np.exp(scores - peak).sum(axis=-1, keepdims=True))


def _occluded_inputs(window: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Row 0: the model's input; row 1 + j: the same input with every occurrence of distinct item j
    replaced by padding, in place. In place, not deleted: deleting shifts every older item one step
    closer to now, and that shift alone changes what a position-aware model predicts (an item that
    follows "A, then one other item" loses its cause when the other item is deleted). Padding is what
    the models already read as "no item" (SASRec masks it out of attention).
    Returns (inputs (1 + V, max_len), the V distinct item indices, most recent first)."""
    distinct = np.asarray(list(dict.fromkeys(window[::-1].tolist())), dtype=np.int64)  # (V,)
    inputs = np.zeros((1 + len(distinct), max_len), dtype=np.int64)  # (1 + V, L) left-padded
    inputs[:, max_len - len(window) :] = window
    inputs[1:, max_len - len(window) :] *= window[None, :] != distinct[:, None]
    return inputs, distinct


def top_k(scores: np.ndarray, *, exclude: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first, never an excluded one; ties go to the lower position.

    NaN counts as -inf, as in evaluation, so that a diverged model cannot look good."""
    values = np.where(np.isnan(scores), np.inf, -scores)  # (N,) smaller is better
    allowed = np.ones(len(scores), dtype=bool)  # (N,)
    allowed[exclude] = False
    values[~allowed] = np.inf
    k = min(k, int(allowed.sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(values, k - 1)[k - 1]
    pool = np.flatnonzero((values <= kth) & allowed)  # (>= k,) all as good as the k-th: ties included
    return pool[np.lexsort((pool, values[pool]))][:k]  # score desc, then position asc


def _read_items(path: Path, num_items: int) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(
            f"{path}: item mapping missing; copy the items.json that `fedseqrec export` wrote beside the model"
        )
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8 text
        reason = " ".join(str(exc).split())[:100] if not isinstance(exc, RecursionError) else "nested too deeply"
        raise DataError(
            f"{path}: unreadable item mapping ({reason}); copy the items.json of the same export again"
        ) from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("item_ids"), list):
        raise DataError(f"{path}: no 'item_ids' list; copy the items.json written by the same export as the model")
    try:
        item_ids = np.asarray(blob["item_ids"], dtype=np.int64)  # (N + 1,)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(
            f"{path}: item_ids are not all integers ({exc}); copy the items.json of the same export"
        ) from exc
    if item_ids.shape != (num_items + 1,):
        raise DataError(
            f"{path}: {len(item_ids)} item IDs for a model of {num_items} items + padding; copy the items.json "
            "of the same export as the model"
        )
    if len(np.unique(item_ids[1:])) < num_items:  # each model index is one item: a repeat maps two to one
        raise DataError(f"{path}: an item ID is listed twice; copy the items.json of the same export as the model")
    popularity = blob.get("popularity")
    if popularity is not None:
        try:
            popularity = np.asarray(popularity, dtype=np.float64)  # (N + 1,)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{path}: popularity is not a list of numbers; copy the items.json of the same export"
            ) from exc
        if popularity.shape != item_ids.shape:
            raise DataError(f"{path}: popularity has shape {popularity.shape}, expected ({len(item_ids)},)")
    return item_ids, popularity


def read_item_titles(path: str | Path) -> dict[int, str]:
    """Original item ID -> title from MovieLens item metadata: movies.dat (`ID::Title::Genres`) or
    u.item (`ID|Title|...`), both latin-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: item metadata file not found (MovieLens movies.dat or u.item)")
    titles = {}
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::") if "::" in line else line.split("|")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise DataError(f"{path}:{number}: expected 'ID::Title::Genres' or 'ID|Title|...', got {line[:60]!r}")
        titles[int(fields[0])] = fields[1]
    return titles
