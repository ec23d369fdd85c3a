"""bench/gpu.sh's CPU path: the GPU script runs end to end (tiny model, a few steps), so it cannot rot."""

import json
import os
import subprocess

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_script_cpu_path_writes_its_table(tmp_path):
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu.sh"), "--cpu", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    overhead = json.loads((tmp_path / "overhead_tiny.json").read_text())
    assert set(overhead["arms"]) == {"plain", "mmr", "mmr_margin", "select", "cached", "record"}
    assert overhead["data"] == "synthetic" and overhead["device"] == "cpu"
    readme = (tmp_path / "README.md").read_text()
    assert "`bash bench/gpu.sh --cpu`" in readme and "skipped" in readme  # no CUDA here: its tests skip
    for arm in ("mmr", "mmr_margin", "select", "cached", "record"):
        assert f"| tiny | {arm} | " in readme
    assert json.loads((tmp_path / "environment.json").read_text())["cuda_tests_exit_code"] in (0, 5)
