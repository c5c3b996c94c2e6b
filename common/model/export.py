"""Export a trained run to ONNX for on-device recommendation (float, and optionally int8).

Written to the output folder: `model.onnx` (and `model.int8.onnx`), `items.json` (index -> original
item ID, and the popularity vector used for empty histories), `item_vectors.npy` (the scorer's item
vectors, which on-device MMR re-ranking compares) and `metadata.json`. The metadata is
also stored in each ONNX file's `metadata_props` under the key "fedseqrec", so a model file always
says what it is. The graph maps a left-padded (B, max_len) int64 history to (B, N) scores for the
next item (index j = item j + 1); masking seen items is left to the runner, which knows the
whole history, not only its last max_len items.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.layers import DPGRU, DPLSTM

from common.errors import DataError, FedSeqRecError
from common.model.checkpoint import load_model
from common.model.models import Block, SASRec, SequenceRecommender
from common.outputs import check_output_dir, staged_output
from common.run_files import PrivacyFile, read_json

FORMAT = "fedseqrec-ondevice/1"
OPSET = 17
METADATA_KEY = "fedseqrec"
INPUT, OUTPUT = "items", "scores"
ITEMS_FILE, METADATA_FILE = "items.json", "metadata.json"
ITEM_VECTORS_FILE = "item_vectors.npy"  # the scorer's item vectors, for re-ranking by similarity on the device
MAX_ABS_ERROR = 1e-3  # float ONNX vs PyTorch, on logits of order 1-10


class NextItemScores(nn.Module):
    """The model as the device uses it: scores after the latest item only."""

    def __init__(self, model: SequenceRecommender):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encode(items)[:, -1]  # (B, D)
        return self.model.score(hidden)  # (B, N)


class LastPositionBlock(nn.Module):
    """A SASRec block that returns only the last position (B, 1, D): keys and values still come from
    every position, but the query, attention row, projection and feed-forward are computed once,
    not T times (about half of SASRec's FLOPs at max_len 200). Same math as `Block` in eval mode;
    verify_export checks the exported graph against the unmodified model."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        D = block.attn.proj.in_features
        # Own Linear layers for the query and key/value parts of `qkv`: weights stay initializers,
        # which the int8 quantizer needs (a slice taken in the graph would stay float).
        self.q, self.kv = nn.Linear(D, D), nn.Linear(D, 2 * D)
        with torch.no_grad():
            for part, rows in ((self.q, slice(0, D)), (self.kv, slice(D, 3 * D))):
                part.weight.copy_(block.attn.qkv.weight[rows])
                part.bias.copy_(block.attn.qkv.bias[rows])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        attn = self.block.attn
        nh, hs = attn.num_heads, D // attn.num_heads
        h = self.block.ln_attn(x)  # (B, T, D)
        q = self.q(h[:, -1:])  # (B, 1, D)
        k, v = self.kv(h).split(D, dim=2)  # 2 x (B, T, D)
        q = q.view(B, 1, nh, hs).transpose(1, 2)  # (B, nh, 1, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, -1:])  # (B, nh, 1, hs)
        x = x[:, -1:] + attn.proj(y.transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        return x + self.block.ff(self.block.ln_ff(x))  # (B, 1, D)


def exportable(model: SequenceRecommender) -> SequenceRecommender:
    """An eval-mode copy with the same outputs at the last position, built to export well.

    - Opacus DPLSTM/DPGRU are Python loops over time steps: traced, they unroll into max_len cells per
      layer (minutes to export, ~40 ms per call at max_len 200, and int8 cannot shrink them). The
      copy uses torch.nn.LSTM/GRU with the same weights (same names), one ONNX LSTM/GRU op each.
    - SASRec's last block only needs to produce the last position (LastPositionBlock).
    """
    twin = copy.deepcopy(model).eval()
    rnn = getattr(twin, "rnn", None)
    if isinstance(rnn, (DPLSTM, DPGRU)):
        plain = (nn.LSTM if isinstance(rnn, DPLSTM) else nn.GRU)(
            rnn.input_size,
            rnn.hidden_size,
            num_layers=rnn.num_layers,
            bias=rnn.bias,
            batch_first=rnn.batch_first,
            dropout=rnn.dropout,
            bidirectional=rnn.bidirectional,
        )
        plain.load_state_dict(rnn.state_dict())
        twin.rnn = plain.eval()
    if isinstance(twin, SASRec) and isinstance(twin.blocks[-1], Block):  # the original block exports whole
        twin.blocks[-1] = LastPositionBlock(twin.blocks[-1])
    return twin


def _cast_bool_eyelike(proto: onnx.ModelProto) -> None:
    """SASRec's `torch.eye(T, dtype=bool)` exports as a bool EyeLike, which ONNX Runtime has no
    kernel for: compute it in float and cast around it."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input)}
    nodes = []
    for node in proto.graph.node:
        dtype = next((a.i for a in node.attribute if a.name == "dtype"), None)
        if node.op_type != "EyeLike" or (dtype or types.get(node.input[0])) != onnx.TensorProto.BOOL:
            nodes.append(node)
            continue
        source, target = node.input[0], node.output[0]
        as_float, float_eye = f"{node.name}_in_float", f"{node.name}_float"
        nodes += [
            onnx.helper.make_node("Cast", [source], [as_float], to=onnx.TensorProto.FLOAT, name=f"{node.name}_cast_in"),
            onnx.helper.make_node("EyeLike", [as_float], [float_eye], name=node.name, dtype=onnx.TensorProto.FLOAT),
            onnx.helper.make_node(
                "Cast", [float_eye], [target], to=onnx.TensorProto.BOOL, name=f"{node.name}_cast_out"
            ),
        ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _set_metadata(path: Path, metadata: dict) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(proto, str(path))


def export_onnx(model: SequenceRecommender, path: Path) -> None:
    """Trace the model at its fixed max_len (dynamic batch) and write a checked ONNX file."""
    wrapper = NextItemScores(exportable(model)).eval()  # a fresh wrapper trains; export restores that mode
    export_scores_module(wrapper, path, max_len=model.config.max_len, num_items=model.config.num_items)


def export_scores_module(wrapper: nn.Module, path: Path, *, max_len: int, num_items: int) -> None:
    """Trace any (B, max_len) items -> (B, N) scores module (a model, an ensemble) to a checked ONNX file."""
    example = torch.zeros(2, max_len, dtype=torch.long)  # (2, L): one padded row, one full row
    example[0, -3:] = torch.tensor([1, 2, 3]).clamp(max=num_items)
    example[1] = torch.arange(max_len) % num_items + 1
    with warnings.catch_warnings():
        # The legacy (TorchScript) exporter is chosen on purpose: the dynamo one needs onnxscript.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        # SASRec's `T > max_len` check becomes a constant; T is always max_len here.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # nn.LSTM/GRU warn that batch sizes other than the traced one may fail; verify_export runs 1 and 8.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=[OUTPUT],
            do_constant_folding=True,
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    proto = onnx.load(str(path))
    _cast_bool_eyelike(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def verify_export(model: SequenceRecommender, path: Path, *, histories: int = 8, seed: int = 0) -> float:
    """Largest |ONNX - PyTorch| score over random histories of every length class; raises if too large."""
    reference = NextItemScores(model).eval()
    return verify_scores_module(
        reference, path, max_len=model.config.max_len, num_items=model.config.num_items, histories=histories, seed=seed
    )


def verify_scores_module(
    reference: nn.Module, path: Path, *, max_len: int, num_items: int, histories: int = 8, seed: int = 0
) -> float:
    """`verify_export` for any scores module (a model's NextItemScores, an ensemble)."""
    rng = np.random.default_rng(seed)
    inputs = np.zeros((histories, max_len), dtype=np.int64)  # (B, L) left-padded
    for row, length in enumerate(np.linspace(0, max_len, histories).astype(int)):
        if length:
            inputs[row, -length:] = rng.integers(1, num_items + 1, size=length)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: inputs})[0]  # (B, N)
    single = session.run([OUTPUT], {INPUT: inputs[-1:]})[0]  # (1, N): the device's batch size
    with torch.no_grad():
        want = reference(torch.as_tensor(inputs)).numpy()  # (B, N)
    error = max(float(np.abs(got - want).max()), float(np.abs(single - want[-1:]).max()))
    if not error <= MAX_ABS_ERROR:
        raise FedSeqRecError(
            f"{path}: ONNX scores differ from PyTorch by up to {error:.2e} "
            f"(allowed {MAX_ABS_ERROR:g}); the export is wrong, do not ship it"
        )
    return error


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization: int8 weights, activations quantized per call (no calibration data).

    Per-channel weight scales: on trained ML-1M models they raise identical top-10 lists from 23% to
    38-46% of users (same items in any order: 77% -> 85-87%) for 3% more bytes."""
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(f".{target.name}.pre")
    quant_pre_process(str(source), str(prepared))  # shape inference + graph fusions, as ORT recommends
    try:
        quantize_dynamic(str(prepared), str(target), per_channel=True)
    finally:
        prepared.unlink()


def privacy_summary(run_dir: Path) -> dict | None:
    path = run_dir / "privacy.json"
    if not path.exists():
        return None
    report = read_json(path, PrivacyFile, what="privacy report")
    keys = (
        "mechanism",
        "dp_mode",
        "unit_of_privacy",
        "adjacency",
        "sampling",
        "sensitivity",
        "epsilon",
        "delta",
        "rounds",
        "accountant",
        "noise_multiplier",
        "clipping_norm",
        "noise_randomness",
    )
    return {key: report.get(key) for key in keys}


def training_item_counts(run_config: dict, item_ids: np.ndarray, run_dir: Path | None = None) -> np.ndarray:
    """(N + 1,) counts of each item in the run's training parts, indexed like the model; the data found
    where the run recorded it (RUN_DIR/inputs.json), else where its config and the environment point."""
    from common.config import RunConfig
    from common.data.files import MOVIELENS, resolve_interactions
    from common.data.load import load_sequence_data
    from common.data.run_inputs import recorded_config

    config = RunConfig.from_flat(run_config, where="the run's run_config")
    if run_dir is not None:
        config = recorded_config(run_dir, config, inputs=("interactions",))
    if config.data.data in MOVIELENS:  # an export never downloads: fail fast if the data is not here
        resolve_interactions(config.data.data, config.data.data_dir, download=False)
    data = load_sequence_data(config.data)
    if not np.array_equal(data.item_ids, item_ids):
        raise DataError(f"{config.data.data}: its item catalogue differs from the model's; pass item counts explicitly")
    return data.item_counts()


def _popularity(
    metadata: dict, item_ids: np.ndarray, item_counts: np.ndarray | None, dp: bool, run_dir: Path | None = None
) -> tuple[list[int] | None, str]:
    """The popularity vector for empty histories, and where it came from."""
    if item_counts is not None:
        counts = np.asarray(item_counts)
        if counts.shape != item_ids.shape:
            raise DataError(
                f"item_counts has shape {counts.shape}; the model needs {item_ids.shape} (index 0 = padding)"
            )
        return [int(c) for c in counts], "given item counts"
    if dp:  # raw counts of the users' data are not covered by the run's DP guarantee
        return None, "none: DP run, raw item counts would leak outside the privacy guarantee"
    run_config = metadata.get("run_config")
    if not run_config:
        return None, "none: model.pt has no run_config to find its training data"
    try:
        counts = training_item_counts(run_config, item_ids, run_dir)
    except FedSeqRecError as exc:
        return None, f"none: training data unavailable ({exc})"
    return [int(c) for c in counts], "training item counts (train parts of leave-one-out)"


def export_run(
    run_dir: Path, out_dir: Path, int8: bool = False, *, item_counts: np.ndarray | None = None
) -> list[Path]:
    """Export RUN_DIR/model.pt to out_dir; returns the written paths (model files first)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    checkpoint = run_dir / "model.pt"
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: no model file; pass the out-dir of a finished run")
    check_output_dir(out_dir, "--out")
    model, item_ids, run_metadata = load_model(checkpoint)
    config = model.config
    if len(item_ids) != config.num_items + 1:
        raise DataError(f"{checkpoint}: {len(item_ids)} item IDs for a model of {config.num_items} items + padding")
    privacy = privacy_summary(run_dir)
    run_config = run_metadata.get("run_config", {})
    dp = privacy is not None or run_config.get("dp-mode", "none") != "none"
    popularity, popularity_source = _popularity(run_metadata, item_ids, item_counts, dp, run_dir)

    final_dir = out_dir
    with staged_output(final_dir, "--out") as out_dir:  # nothing appears unless every file is written
        float_path = out_dir / "model.onnx"
        export_onnx(model, float_path)
        max_error = verify_export(model, float_path)
        paths = [float_path]
        if int8:
            quantize_int8(float_path, out_dir / "model.int8.onnx")
            paths.append(out_dir / "model.int8.onnx")

        metadata = {
            "format": FORMAT,
            "arch": config.arch,
            "max_len": config.max_len,
            "num_items": config.num_items,
            "model_config": {
                k: getattr(config, k) for k in ("emb_dim", "item_rank", "hidden_dim", "num_layers", "num_heads")
            },
            "input": INPUT,
            "output": OUTPUT,
            "padding_index": 0,
            "items_file": ITEMS_FILE,
            "item_vectors_file": ITEM_VECTORS_FILE,
            "popularity": popularity_source,
            "training_run": {
                "run_dir": str(run_dir),
                "model_sha256": _sha256(checkpoint),
                **{k: v for k, v in run_metadata.items() if k != "run_config"},
                "run_config": run_config,
            },
            "privacy": privacy,
            "export": {"torch": torch.__version__, "onnx_opset": OPSET, "max_abs_error_vs_torch": max_error},
        }
        for path in paths:
            _set_metadata(path, metadata)
        items_path, metadata_path = out_dir / ITEMS_FILE, out_dir / METADATA_FILE
        items_path.write_text(json.dumps({"item_ids": [int(i) for i in item_ids], "popularity": popularity}))
        vectors_path = out_dir / ITEM_VECTORS_FILE
        np.save(vectors_path, item_vectors(model), allow_pickle=False)
        metadata_path.write_text(json.dumps(metadata, indent=2))
        written = paths + [items_path, vectors_path, metadata_path]
    return [final_dir / path.name for path in written]


def item_vectors(model: SequenceRecommender) -> np.ndarray:
    """(N + 1, D) float16: the vector each item is scored against (scores = hidden . vector), read off
    the scorer itself (score of the identity), so factorised tables and side features are included.
    Part of the released model already; row 0 (padding) is zero."""
    with torch.no_grad():
        table = model.score(torch.eye(model.config.emb_dim)).T  # (N, D)
    return np.concatenate([np.zeros((1, table.shape[1])), table.numpy()]).astype(np.float16)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
