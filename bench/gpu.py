#!/usr/bin/env python
"""The GPU evidence in one call: the CUDA-only tests, then the overhead ratios in bf16, written to docs/gpu/.

On one CUDA device (``bash bench/gpu.sh``, under 8 minutes on an H200):

1. ``pytest -m cuda tests/test_cuda.py``: fp16 and bf16 autocast margin math and gradients, torch.compile
   of an MMR step, and ``record_margins`` sums against the CPU's; the log goes to ``OUT/cuda_tests.txt``.
2. ``bench/overhead.py --data synthetic --device cuda --bf16`` for every arm (plain, mmr, mmr_margin,
   select at r = 2, cached, record) on MiniLM's and on bert-base's architecture built from their configs
   (random weights), batch 32, 128 tokens, interleaved repetitions: ``OUT/overhead_<architecture>.json``.
3. ``OUT/README.md``: the throughput and peak-memory ratios against the plain Trainer (median and range
   over the repetitions), with the device, the versions and the command that made them.

``--cpu`` runs the same path with a tiny model and a few steps on the CPU (the test suite does, so that
the script cannot rot between GPU sessions); CUDA tests are then skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("mmr", "mmr_margin", "select", "cached", "record")
FULL = {"architectures": ("minilm", "bert-base"), "steps": 60, "warmup": 10, "repeats": 3, "batch": 32, "seq_len": 128}
SMOKE = {"architectures": ("tiny",), "steps": 4, "warmup": 1, "repeats": 1, "batch": 4, "seq_len": 16}


def run(command: list[str], log: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "bench")]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if log:
        with open(log, "w") as handle:
            handle.write(result.stdout + result.stderr)
    return result


def ratio_cell(entry: dict) -> str:
    return f"{entry['median']:.3f} ({entry['min']:.3f}–{entry['max']:.3f})"


def readme(results: dict[str, dict], environment: dict, command: str, tests: str) -> str:
    lines = [
        "# GPU overhead of hf-mmr",
        "",
        (
            f"Made by `{command}` on {environment['device']} (torch {environment['torch']}, transformers "
            f"{environment['transformers']}, {environment['date']}). Synthetic token ids, models built from their "
            "configs with random weights, bf16 mixed precision where the device is CUDA; each arm in its own process, "
            "repetitions interleaved; ratios against the plain `Trainer` of the same repetition, median (range)."
        ),
        "",
        f"CUDA tests: {tests}",
        "",
        "| architecture | arm | throughput / plain | peak memory / plain | plain samples/s |",
        "|---|---|---|---|---|",
    ]
    for architecture, result in results.items():
        plain = result["arms"]["plain"]["train_samples_per_second"]["median"]
        for arm in ARMS:
            entry = result["arms"][arm]
            lines.append(
                f"| {architecture} | {arm} | {ratio_cell(entry['throughput_ratio'])} | "
                f"{ratio_cell(entry['peak_memory_ratio'])} | {plain:.1f} |"
            )
    settings = next(iter(results.values()))
    lines += [
        "",
        (
            f"Batch {settings['batch']}, {settings['seq_len']} tokens, {settings['steps']} steps of which the first "
            f"{settings['warmup_steps']} are not timed, {settings['repeats']} repetitions; select at r = "
            f"{settings['pool_factor']}. Arms: `mmr` and `mmr_margin` are the two forms at λ = 0.1, `record` is "
            "`record_margins` with MMR off."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "gpu"), help="where the JSON and README go")
    parser.add_argument("--cpu", action="store_true", help="the same path, tiny and on the CPU (a smoke test)")
    options = parser.parse_args()
    os.makedirs(options.out, exist_ok=True)
    import torch
    import transformers

    device = "cpu" if options.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; run with --cpu for the smoke test")
    plan = SMOKE if options.cpu else FULL
    started = time.time()
    tests = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"],
        os.path.join(options.out, "cuda_tests.txt"),
    )
    summary_line = (tests.stdout.strip().splitlines() or ["no output"])[-1]
    if tests.returncode not in (0, 5):  # 5: every test skipped or deselected (no CUDA)
        print(tests.stdout[-3000:], tests.stderr[-3000:], file=sys.stderr)
    results = {}
    for architecture in plan["architectures"]:
        path = os.path.join(options.out, f"overhead_{architecture}.json")
        command = [sys.executable, os.path.join(ROOT, "bench", "overhead.py"), "--data", "synthetic"]
        command += ["--architecture", architecture, "--device", device, "--pool_factor", "2", "--output", path]
        for name in ("steps", "warmup", "repeats", "batch", "seq_len"):
            command += [f"--{name}", str(plan[name])]
        command += ["--bf16"] if device == "cuda" else []
        result = run(command)
        if result.returncode != 0:
            raise SystemExit(f"bench/overhead.py failed for {architecture}:\n{result.stderr[-3000:]}")
        with open(path) as handle:
            results[architecture] = json.load(handle)
    environment = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(options.out, "environment.json"), "w") as handle:
        json.dump({**environment, "cuda_tests": summary_line, "cuda_tests_exit_code": tests.returncode}, handle)
    text = readme(results, environment, "bash bench/gpu.sh" + (" --cpu" if options.cpu else ""), summary_line)
    with open(os.path.join(options.out, "README.md"), "w") as handle:
        handle.write(text)
    print(text)
    if tests.returncode not in (0, 5):
        raise SystemExit(f"the CUDA tests failed: {summary_line} (see {options.out}/cuda_tests.txt)")


if __name__ == "__main__":
    main()
