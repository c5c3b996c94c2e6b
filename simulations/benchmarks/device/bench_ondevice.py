"""On-device benchmark (issue 6): the exported model against PyTorch, and what it costs on a device.

    .venv/bin/python -m simulations.benchmarks.device.bench_ondevice /work/bench/sasrec_L200 \
        --data-dir /work/shared/data --out simulations/results/ondevice.json

Exports RUN_DIR (float + int8) and measures, on the test split of the run's dataset:
agreement (share of users whose top-10 list is identical to PyTorch's, every seen item masked),
NDCG@10 of each model through the runner, latency of one `recommend` call (single-threaded)
and peak RSS. Latency and memory come from a worker process that never imports torch, as on a
device; this module imports torch only inside the functions that need it, so the worker
(`--worker`) stays torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOP_K = 10


def _memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux keeps that across exec,
    so a worker spawned by the torch-loaded parent would report the parent's peak."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB -> MiB


def _timed(call, arguments: list) -> dict[str, float]:
    """Wall and thread-CPU time per call. With one intra-op thread ORT computes on the calling thread,
    so CPU time is the cost without the waits that a loaded machine adds to wall time."""
    wall, cpu = [], []
    for argument in arguments:
        start_wall, start_cpu = time.perf_counter(), time.thread_time()
        call(argument)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    wall_ms, cpu_ms = np.asarray(wall) * 1e3, np.asarray(cpu) * 1e3
    return {
        "p50_ms": float(np.percentile(wall_ms, 50)),
        "p99_ms": float(np.percentile(wall_ms, 99)),
        "mean_ms": float(wall_ms.mean()),
        "cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
        "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
        "calls": len(wall_ms),
    }


def worker(model_path: str, histories_path: str, calls: int) -> dict:
    """Latency and memory of the runner alone (this process must not import torch)."""
    from client.ondevice import OnDeviceRecommender

    imported_mb = _memory_mb("VmRSS")
    runner = OnDeviceRecommender.load(model_path)
    loaded_mb = _memory_mb("VmRSS")
    with np.load(histories_path) as blob:
        sets = {name: np.split(blob[f"{name}_items"], blob[f"{name}_offsets"][1:-1]) for name in ("full", "all")}
    out = {
        "torch_imported": "torch" in sys.modules,
        "rss_after_imports_mb": imported_mb,
        "rss_after_load_mb": loaded_mb,
        "full_min_history": min(len(h) for h in sets["full"]),
    }
    for name, histories in sets.items():
        for history in histories[:50]:  # warm-up: first-call allocations, caches
            runner.recommend(history, k=TOP_K)
        cycle = [histories[call % len(histories)] for call in range(calls)]
        out[f"recommend_{name}"] = _timed(lambda history: runner.recommend(history, k=TOP_K), cycle)
    full = np.zeros((1, runner.max_len), dtype=np.int64)  # (1, L)
    full[0] = runner.to_indices(sets["full"][0])[0][-runner.max_len :]
    out["session_run_full"] = _timed(runner.scores, [full] * calls)
    out["peak_rss_mb"] = _memory_mb("VmHWM")
    out["loadavg_1min"] = os.getloadavg()[0]
    return out


def _write_latency_histories(path: Path, histories: list[np.ndarray], seed: int = 0) -> None:
    """Two samples of test histories (original IDs): 'full' = the 500 longest (on ML-1M all fill the
    max_len window: the worst case), 'all' = 1000 random users."""
    rng = np.random.default_rng(seed)
    longest = np.argsort([-len(h) for h in histories], kind="stable")[:500]
    sample = {
        "full": [histories[i] for i in longest],
        "all": [histories[i] for i in rng.permutation(len(histories))[:1000]],
    }
    arrays = {}
    for name, chosen in sample.items():
        arrays[f"{name}_items"] = np.concatenate(chosen)
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(h) for h in chosen])])
    np.savez(path, **arrays)


def _run_worker(model: Path, histories: Path, calls: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "simulations.benchmarks.device.bench_ondevice",
        "--worker",
        str(model),
        "--histories",
        str(histories),
        "--calls",
        str(calls),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[3])
    return json.loads(done.stdout)


def torch_top_k(model, histories: list[np.ndarray], max_len: int, batch_size: int = 256) -> np.ndarray:
    """(U, K) PyTorch top-K item indices, every seen item masked (the runner's rule)."""
    import torch

    from common.data.sequences import left_pad
    from common.evaluation.ranking import model_scores

    score = model_scores(model)
    tops = []
    with torch.no_grad():
        for start in range(0, len(histories), batch_size):
            chunk = histories[start : start + batch_size]
            scores = score(torch.as_tensor(left_pad(chunk, max_len)))  # (B, N)
            seen = torch.as_tensor(left_pad(chunk, max(len(h) for h in chunk)))  # (B, H) whole history, 0 = pad
            scores = torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores], 1)  # (B, N + 1)
            scores.scatter_(1, seen, float("-inf"))
            tops.append(scores.topk(TOP_K, dim=1).indices.numpy())  # (B, K) indices 1..N
    return np.concatenate(tops)


def ndcg_from_lists(tops: np.ndarray, targets: np.ndarray) -> float:
    hit = tops == targets[:, None]  # (U, K)
    gains = hit / np.log2(np.arange(TOP_K) + 2.0)  # (U, K)
    return float(gains.sum(1).mean())


def bench(run_dir: Path, export_dir: Path, data_dir: str | None, calls: int, users: int) -> dict:
    import dataclasses

    from client.ondevice import OnDeviceRecommender
    from common.config import RunConfig
    from common.data.load import load_sequence_data
    from common.evaluation.ranking import evaluate, model_scores
    from common.model.checkpoint import load_model
    from common.model.export import export_run

    model, item_ids, metadata = load_model(run_dir / "model.pt")
    config = RunConfig.from_flat(metadata["run_config"], where=f"{run_dir}/model.pt")
    settings = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=data_dir)
    data = load_sequence_data(settings)
    if not np.array_equal(data.item_ids, item_ids):
        raise SystemExit(f"{settings.data}: catalogue differs from the model's; wrong data-dir?")
    max_len = model.config.max_len

    started = time.perf_counter()
    paths = export_run(run_dir, export_dir, int8=True, item_counts=data.item_counts())
    export_seconds = time.perf_counter() - started

    histories, targets = data.test_cases()
    if users:
        histories, targets = histories[:users], targets[:users]
    reference = torch_top_k(model, histories, max_len)  # (U, K)
    torch_eval = evaluate(
        model_scores(model),
        data,
        "test",
        top_k=TOP_K,
        mask_seen=config.train.mask_seen,
        users=np.arange(len(histories)),
    )
    result = {
        "run_dir": str(run_dir),
        "arch": model.config.arch,
        "max_len": max_len,
        "num_items": data.num_items,
        "test_users": len(histories),
        "export_seconds": export_seconds,
        "torch": {
            f"ndcg@{TOP_K}": torch_eval[f"ndcg@{TOP_K}"],
            f"ndcg@{TOP_K}_from_top_lists": ndcg_from_lists(reference, targets),
        },
        "sizes_bytes": {p.name: p.stat().st_size for p in paths},
    }
    originals = [item_ids[h] for h in histories]  # the runner speaks original IDs
    index_of = {int(item): i for i, item in enumerate(item_ids)}
    with tempfile.TemporaryDirectory() as tmp:
        latency_histories = Path(tmp) / "histories.npz"
        _write_latency_histories(latency_histories, originals)
        for name in ("model.onnx", "model.int8.onnx"):
            runner = OnDeviceRecommender.load(export_dir / name)
            tops = np.array([[index_of[i] for i in runner.recommend(h, k=TOP_K).items] for h in originals])
            result[name] = {
                "identical_top10_share": float((tops == reference).all(1).mean()),
                "same_top10_items_share": float((np.sort(tops, 1) == np.sort(reference, 1)).all(1).mean()),
                "mean_top10_overlap": float(np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(tops, reference)])),
                f"ndcg@{TOP_K}": ndcg_from_lists(tops, targets),
                "runner": _run_worker(export_dir / name, latency_histories, calls),
            }
            print(json.dumps({name: result[name]}), flush=True)
    return result


def bench_export(export_dir: Path, data: str, data_dir: str | None, calls: int) -> dict:
    """Latency and memory of an existing export folder (a single model or an ensemble graph) on
    the test histories of `data`: no export, no agreement check (export itself checks ONNX
    against PyTorch)."""
    from common.config import DataSettings
    from common.data.load import load_sequence_data

    metadata = json.loads((export_dir / "metadata.json").read_text())
    loaded = load_sequence_data(DataSettings(data=data, data_dir=data_dir or ""))
    histories, _ = loaded.test_cases()
    originals = [loaded.item_ids[h] for h in histories]
    with tempfile.TemporaryDirectory() as tmp:
        latency_histories = Path(tmp) / "histories.npz"
        _write_latency_histories(latency_histories, originals)
        runner = _run_worker(export_dir / "model.onnx", latency_histories, calls)
    return {
        "export_dir": str(export_dir),
        "arch": metadata["arch"],
        "members": metadata.get("members"),
        "max_len": metadata["max_len"],
        "sizes_bytes": {p.name: p.stat().st_size for p in sorted(export_dir.iterdir()) if p.is_file()},
        "model.onnx": {"runner": runner},
    }


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="finished run with model.pt (its run_config names the data)")
    parser.add_argument("--out", default="simulations/results/ondevice.json", help="results JSON")
    parser.add_argument("--export-dir", default=None, help="where to export (default: runs/ondevice/<RUN_DIR name>)")
    parser.add_argument("--data-dir", default=None, help="overrides the run's data-dir")
    parser.add_argument("--calls", type=int, default=2000, help="timed recommend() calls per history set")
    parser.add_argument("--users", type=int, default=0, help="first N test users only (0 = all)")
    parser.add_argument(
        "--latency-of", metavar="EXPORT_DIR", help="time an existing export (e.g. an ensemble) instead of exporting"
    )
    parser.add_argument("--data", default="ml-1m", help="with --latency-of: the dataset whose test histories to use")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: torch-free latency/memory worker
    parser.add_argument("--histories", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.histories, args.calls)))
        return
    if args.latency_of:
        if not (Path(args.latency_of) / "model.onnx").is_file():
            parser.error(f"--latency-of {args.latency_of}: no model.onnx there; pass a folder `fedseqrec export` wrote")
        result = bench_export(Path(args.latency_of), args.data, args.data_dir, args.calls)
    elif not args.run_dir:
        parser.error("RUN_DIR (or --latency-of EXPORT_DIR) is required")
    else:
        run_dir = Path(args.run_dir)
        export_dir = Path(args.export_dir) if args.export_dir else Path("runs/ondevice") / run_dir.resolve().name
        result = bench(run_dir, export_dir, args.data_dir, args.calls, args.users)
    result["machine"] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": __import__("onnxruntime").__version__,
        "loadavg_1min_at_end": os.getloadavg()[0],
    }
    result["command"] = " ".join([".venv/bin/python -m simulations.benchmarks.device.bench_ondevice", *sys.argv[1:]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
