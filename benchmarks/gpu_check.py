"""The steps of benchmarks/gpu_check.sh that run Python on one CUDA GPU.

Each subcommand measures one thing and writes ``benchmarks/results/gpu_<step>.json`` and
``.md``; ``summary`` gathers the steps' status lines into ``gpu_check.json`` / ``.md``.

    python benchmarks/gpu_check.py inference   # throughput of every method, fp32 and bf16
    python benchmarks/gpu_check.py averaging   # average_class seconds per 100 particles
    python benchmarks/gpu_check.py training    # published-preset DISCA, few-shot, transfer
    python benchmarks/gpu_check.py workflow    # the tiny workflow with device: cuda
    python benchmarks/gpu_check.py tests JUNIT_XML
    python benchmarks/gpu_check.py summary STATUS_TSV

bf16 is *accuracy-neutral* for a method when, on the same planted stack, the bf16 features
agree with the fp32 ones to a relative error ≤ 2 % (Frobenius) and a k-means clustering of the
fp32 features labels the bf16 features (assigned to the same centroids) alike: adjusted Rand
index ≥ 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from common import REPO, log, machine_info, machine_line, md_table, write_outputs

RESULTS = REPO / "benchmarks" / "results"
REL_ERR_MAX = 0.02
ARI_MIN = 0.95


def _torch(device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU")
    return torch


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else float("nan")


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _planted_stack(n_per_class: int, box: int, snr: float, seed: int = 0):
    """Two demo complexes as subtomograms (labels 0/1), for neutrality and training."""
    from common import DEMO_CLASSES
    from tomoclust.simulate.density import template_density
    from tomoclust.simulate.subtomograms import simulate_subtomograms
    from tomoclust.simulate.tomograms import Template

    names = ["6s47", "4v1w", "3cf3"]
    templates = [Template(nm, i + 1, template_density(REPO / DEMO_CLASSES[nm], 12.0, box=box))
                 for i, nm in enumerate(names)]
    data = simulate_subtomograms(templates, n_per_class, box, 12.0, snr, "aitom", seed=seed)
    labels = data.truth["rlnClassNumber"].to_numpy() - 1
    return np.ascontiguousarray(data.stack, dtype=np.float32), labels


# ------------------------------------------------------------------------------ inference
def _models(box: int):
    from tomoclust.features.fewshot import FewShotSettings, ProtoNet
    from tomoclust.features.networks import AutoEncoder3D, Yopo, YopoSettings
    from tomoclust.features.transfer import TransferNet
    from tomoclust.features.transfer_settings import TransferSettings

    return {
        "DISCA YOPO light (default)": (Yopo(YopoSettings.from_preset("light"), 5), "features"),
        "DISCA YOPO published": (Yopo(YopoSettings.from_preset("published"), 5), "features"),
        "autoencoder (32 ch, paper)": (AutoEncoder3D(box, 32, 32), "encode"),
        "transfer (default)": (TransferNet(TransferSettings().net_config(6)), "features"),
        "few-shot protonet3d light": (ProtoNet(box, FewShotSettings()), "embed"),
        "few-shot protonet3d published": (ProtoNet(box, FewShotSettings(preset="published")),
                                          "embed"),
    }


def _rate(fn, stack, repeats: int) -> float:
    fn(stack[: min(len(stack), 256)])  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(stack)
        times.append(time.perf_counter() - t0)
    return len(stack) / float(np.median(times))


def _agreement(a: np.ndarray, b: np.ndarray, k: int, seed: int = 0) -> tuple[float, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
    mu, sd = a.mean(0), a.std(0) + 1e-12
    km = KMeans(k, n_init=4, random_state=seed).fit((a - mu) / sd)
    la = km.labels_
    lb = km.predict((b - mu) / sd)  # the bf16 features, assigned to the fp32 centroids
    return rel, float(adjusted_rand_score(la, lb))


def cmd_inference(args) -> int:
    torch = _torch(args.device)
    dev = args.device
    from tomoclust.features.invariant import shell_spectra
    from tomoclust.features.networks import count_parameters
    from tomoclust.features.train import infer

    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((args.n, args.box, args.box, args.box)).astype(np.float32)
    planted, _ = _planted_stack(args.planted_per_class, args.box, 0.5)
    results, rows = [], []

    def run(fn):
        def go(x):
            out = fn(x)
            _sync(dev)
            return out
        return go

    inv = run(lambda x: shell_spectra(x, 6, 1.0, device=dev, batch_size=args.batch))
    r = _rate(inv, stack, args.repeats)
    results.append({"method": "invariant (l_max 6)", "precision": "fp32", "per_second": r,
                    "parameters": 0, "note": "FFT-based; runs in fp32 only"})
    rows.append(["invariant (l_max 6)", 0, "fp32", f"{r:,.0f}", "–", "–", "n/a (FFT, fp32)"])
    log(f"invariant: {r:,.0f}/s")
    for name, (model, attr) in _models(args.box).items():
        torch.manual_seed(0)
        model = model.to(dev).eval()
        feat = getattr(model, attr)
        per = {}
        outs = {}
        for prec in ("fp32", "bf16"):
            f = run(lambda x, prec=prec, feat=feat: infer(feat, x, dev, args.batch,
                                                          precision=prec))
            per[prec] = _rate(f, stack, args.repeats)
            outs[prec] = infer(feat, planted, dev, args.batch, precision=prec)
        rel, ari = _agreement(outs["fp32"], outs["bf16"], k=3)
        neutral = rel <= REL_ERR_MAX and ari >= ARI_MIN
        for prec in ("fp32", "bf16"):
            results.append({"method": name, "precision": prec, "per_second": per[prec],
                            "parameters": count_parameters(model)})
        results[-1].update({"relative_error_vs_fp32": rel, "ari_vs_fp32": ari,
                            "accuracy_neutral": neutral})
        rows.append([name, f"{count_parameters(model):,}", "fp32", f"{per['fp32']:,.0f}",
                     "–", "–", "reference"])
        rows.append([name, "", "bf16", f"{per['bf16']:,.0f}", f"{rel:.4f}", f"{ari:.3f}",
                     ("neutral" if neutral else "NOT neutral")
                     + f", {per['bf16'] / per['fp32']:.2f}× fp32"])
        log(f"{name}: fp32 {per['fp32']:,.0f}/s, bf16 {per['bf16']:,.0f}/s, rel {rel:.4f}, "
            f"ARI {ari:.3f}")
        del model
    m = machine_info()
    md = (f"### GPU feature inference throughput\n\nMachine: {machine_line(m)}\n\n"
          f"Random {args.box}³ boxes, median of {args.repeats} passes over {args.n}, batch "
          f"{args.batch}, after a warm-up; networks at their random initialisation (speed does "
          "not depend on the weights). bf16 = autocast to bfloat16 "
          "(`tomoclust.features.train.infer(precision='bf16')`); *neutral* when, on "
          f"{3 * args.planted_per_class} simulated subtomograms of three complexes (SNR 0.5), "
          f"the features' relative error vs fp32 is ≤ {REL_ERR_MAX} and the bf16 features, "
          "assigned to the centroids of a k-means (3) of the fp32 features, keep their labels "
          f"(ARI ≥ {ARI_MIN}).\n\n"
          + md_table(["method", "parameters", "precision", "subtomograms/s",
                      "rel. error vs fp32", "ARI vs fp32", "verdict"], rows))
    write_outputs(RESULTS / "gpu_inference.json",
                  {"machine": m, "args": vars(args), "results": results}, md)
    print(md)
    return 0


# ------------------------------------------------------------------------------ averaging
def cmd_averaging(args) -> int:
    torch = _torch(args.device)
    dev = args.device
    from tomoclust.average import AveragingSettings, average_class

    stack, labels = _planted_stack(args.n, 32, 0.1)
    parts = stack[labels == 0][: args.n]
    settings = AveragingSettings(initial_resolution=50.0 / 12.0)
    if args.iterations:
        settings.iterations = args.iterations
    runs = []
    for rep in range(2):  # the first includes CUDA/cuFFT start-up
        t0 = time.perf_counter()
        average_class(torch.as_tensor(parts).to(dev), settings)
        _sync(dev)
        wall = time.perf_counter() - t0
        runs.append({"repeat": rep, "n": len(parts), "wall_s": wall,
                     "wall_s_per_100": wall * 100 / len(parts)})
        log(f"averaging {len(parts)} particles: {wall:.2f} s")
    m = machine_info()
    md = (f"### GPU averaging time\n\nMachine: {machine_line(m)}\n\n"
          f"`average_class` with the library defaults (iterations {settings.iterations}) on "
          f"{len(parts)} simulated 32³ subtomograms of 6s47 at SNR 0.1, on CUDA; the first "
          "repeat includes start-up.\n\n"
          + md_table(["repeat", "particles", "wall s", "wall s / 100 particles"],
                     [[r["repeat"], r["n"], r["wall_s"], r["wall_s_per_100"]] for r in runs]))
    write_outputs(RESULTS / "gpu_averaging.json",
                  {"machine": m, "args": vars(args), "settings": vars(settings), "runs": runs},
                  md)
    print(md)
    return 0


# ------------------------------------------------------------------------------- training
def cmd_training(args) -> int:
    torch = _torch(args.device)
    dev = args.device
    from sklearn.metrics import adjusted_rand_score
    from tomoclust.features.disca import DiscaSettings, run_disca
    from tomoclust.features.fewshot import FewShotSettings, evaluate_episodes, train_protonet

    torch.backends.cudnn.benchmark = True
    stack, labels = _planted_stack(args.per_class, 32, args.snr)
    rows, results = [], {}

    _reset_peak(dev)
    params = DiscaSettings(preset=args.preset, iterations=args.disca_iterations, k_min=2,
                         k_max=6, batch_size=args.disca_batch, seed=0)
    t0 = time.perf_counter()
    res = run_disca(stack, params, dev)
    _sync(dev)
    wall = time.perf_counter() - t0
    hist = res.history
    ari = float(adjusted_rand_score(labels, res.labels))
    results["disca"] = {"wall_s": wall, "history": hist.to_dict("records"), "ari": ari,
                        "peak_gpu_gb": _peak_gb(dev),
                        "params": vars(params)}
    net_rows = hist[hist["features"] == "network"]
    rows.append([f"DISCA {args.preset}", len(stack), f"{params.iterations} iterations",
                 f"{wall:.1f}", f"{net_rows['seconds'].mean():.1f} s / iteration",
                 f"{results['disca']['peak_gpu_gb']:.2f}", f"ARI {ari:.3f} (K={res.labels.max()})"])
    log(f"DISCA {args.preset}: {wall:.1f} s, ARI {ari:.3f}")

    _reset_peak(dev)
    fs = FewShotSettings(preset=args.preset, epochs=args.fewshot_epochs, episodes_per_epoch=20,
                       shot=5, query=10, seed=0)
    train = labels < 2
    t0 = time.perf_counter()
    tr = train_protonet(stack[train], labels[train], fs, dev)
    _sync(dev)
    wall = time.perf_counter() - t0
    acc = evaluate_episodes(tr.model, stack, labels, 3, 5, 10, 50, 0, dev)
    results["fewshot"] = {"wall_s": wall, "history": tr.history.to_dict("records"),
                          "peak_gpu_gb": _peak_gb(dev),
                          "episodes": acc, "params": vars(fs)}
    rows.append([f"few-shot protonet3d {args.preset}", int(train.sum()), f"{fs.epochs} epochs × 20 "
                 "episodes", f"{wall:.1f}", f"{tr.history['seconds'].mean():.1f} s / epoch",
                 f"{results['fewshot']['peak_gpu_gb']:.2f}",
                 f"3-way 5-shot accuracy {_mean_acc(acc)}"])
    log(f"few-shot {args.preset}: {wall:.1f} s")
    m = machine_info()
    md = (f"### GPU training, {args.preset} presets\n\nMachine: {machine_line(m)}\n\n"
          f"{args.per_class} simulated 32³ subtomograms per class of 6s47, 4v1w, 3cf3 at SNR "
          f"{args.snr} (aitom). Few-shot trains on the first two classes, and is scored on "
          "episodes of all three (the third unseen). Short runs: speed figures, not the "
          "accuracy benchmarks (benchmarks/unsupervised.py, benchmarks/fewshot.py).\n\n"
          + md_table(["run", "particles", "length", "wall s", "per step", "peak GPU GB",
                      "result"], rows))
    write_outputs(RESULTS / "gpu_training.json",
                  {"machine": m, "args": vars(args), "results": results}, md)
    print(md)
    return 0


def _mean_acc(acc) -> str:
    if isinstance(acc, dict):
        for key in ("accuracy", "mean_accuracy", "mean"):
            if key in acc:
                return f"{float(acc[key]):.3f}"
        return json.dumps(acc, default=str)[:60]
    try:
        return f"{float(np.mean(acc)):.3f}"
    except (TypeError, ValueError):
        return str(acc)[:60]


# ------------------------------------------------------------------------------- workflow
def cmd_workflow(args) -> int:
    import yaml

    dev = args.device

    snakemake = Path(sys.executable).parent / "snakemake"
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_methods.yaml").read_text())
    cfg["templates"] = {k: str(REPO / v) for k, v in cfg["templates"].items()}
    cfg["device"] = dev
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [*([str(snakemake)] if snakemake.exists() else [sys.executable, "-m", "snakemake"]),
           "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(work), "--cores", str(args.cores),
           "--configfile", str(work / "config.yaml")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    infos = sorted((work / "results").rglob("info.json"))
    devices = {}
    for p in infos:
        d = json.loads(p.read_text()).get("device")
        if d is not None:
            devices[str(p.relative_to(work))] = d
    bad = {k: v for k, v in devices.items() if not str(v).startswith(dev)}
    ok = proc.returncode == 0 and bool(devices) and not bad
    m = machine_info()
    rows = [[k, v, "yes" if str(v).startswith(dev) else "NO"] for k, v in devices.items()]
    md = (f"### Tiny workflow with device: {dev}\n\nMachine: {machine_line(m)}\n\n"
          f"tests/data/tiny_methods.yaml with `device: {dev}`, {args.cores} cores: snakemake "
          f"exit {proc.returncode} in {wall:.0f} s; {len(devices)} info.json files record a "
          "device" + (f", all {dev}." if ok else f"; NOT all {dev}: {bad}") + "\n\n"
          + md_table(["info.json", "device", f"is {dev}"], rows))
    write_outputs(RESULTS / "gpu_workflow.json",
                  {"machine": m, "returncode": proc.returncode, "wall_s": wall,
                   "devices": devices, "ok": ok,
                   "log_tail": (proc.stdout + proc.stderr)[-4000:]}, md)
    print(md)
    if proc.returncode != 0:
        print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
    return 0 if ok else 1


# ---------------------------------------------------------------------------------- tests
def cmd_tests(args) -> int:
    root = ET.parse(args.junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s
              if c.find("failure") is not None or c.find("error") is not None]
    m = machine_info()
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    md = (f"### CUDA test cases\n\nMachine: {machine_line(m)}\n\n"
          f"`pytest -m 'not slow' -k cuda tests/`: {passed} passed, "
          f"{counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped.\n\n"
          + ("Failed:\n\n" + "\n".join(f"- {f}" for f in failed) + "\n" if failed else ""))
    write_outputs(RESULTS / "gpu_tests.json",
                  {"machine": m, **counts, "passed": passed, "failed": failed}, md)
    print(md)
    return 0


# -------------------------------------------------------------------------------- summary
def cmd_summary(args) -> int:
    rows = [line.split("\t") for line in Path(args.status).read_text().splitlines() if line]
    m = machine_info()
    steps = [{"step": r[0], "status": r[1], "seconds": float(r[2]), "limit_s": int(r[3])}
             for r in rows]
    md = (f"# GPU check\n\nMachine: {machine_line(m)}\n\nCommand: `bash benchmarks/gpu_check.sh`"
          "\n\n" + md_table(["step", "status", "seconds", "limit s"],
                            [[s["step"], s["status"], f"{s['seconds']:.0f}", s["limit_s"]]
                             for s in steps]))
    for s in steps:
        part = RESULTS / f"gpu_{s['step']}.md"
        if part.exists():
            md += "\n" + part.read_text()
    write_outputs(RESULTS / "gpu_check.json", {"machine": m, "steps": steps}, md)
    print(md)
    return 0 if all(s["status"] == "ok" for s in steps) else 1


def main() -> int:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda",
                    help="cuda (the check); cpu only to smoke-test this script")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the gpu_*.json/.md")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inference")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--planted-per-class", type=int, default=100)
    p = sub.add_parser("averaging")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--iterations", type=int, default=None)
    p = sub.add_parser("training")
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--disca-iterations", type=int, default=2)
    p.add_argument("--disca-batch", type=int, default=64)
    p.add_argument("--fewshot-epochs", type=int, default=2)
    p.add_argument("--preset", default="published", help="network preset of both methods")
    p = sub.add_parser("workflow")
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp") + "/tomoclust_gpu_wf")
    p.add_argument("--cores", type=int, default=min(os.cpu_count() or 2, 8))
    p = sub.add_parser("tests")
    p.add_argument("junit")
    p = sub.add_parser("summary")
    p.add_argument("status")
    args = ap.parse_args()
    RESULTS = Path(args.results)
    return globals()[f"cmd_{args.cmd}"](args)


if __name__ == "__main__":
    sys.exit(main())
