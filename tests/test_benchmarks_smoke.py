"""The benchmark harness still runs end to end; it measures nothing here (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_benchmark_runs_every_workload_against_both_servers(tmp_path: Path) -> None:
    require_tool("containerd", "containerd")
    report = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(report.read_text())["results"]
    measured = {(r["case"], r["server"]) for r in results}
    for case in ("large-ingest", "large-read", "small/1", "small/8", "contention"):
        assert {(case, "contentd"), (case, "containerd")} <= measured
    # The small-blob references: a server that stores nothing, and the store without gRPC.
    for case in ("small/1", "small/8"):
        assert {(case, "null-server"), (case, "store-alone")} <= measured
    references = [r for r in results if r["server"] in ("null-server", "store-alone")]
    assert all(r["value"] > 0 and not r["counted"] for r in references)
    assert "| workload |" in run.stdout
    assert "| a gRPC server that stores nothing | 8 |" in run.stdout
    assert "| target: 5x containerd | 8 |" in run.stdout


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_registry_benchmark_pushes_and_pulls_on_both_registries(tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    report = tmp_path / "registry.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "registry.py"),
            "--quick",
            "--rounds",
            "1",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(report.read_text())["results"]
    measured = {(r["case"], r["server"]) for r in results if r["rounds"]}
    for case in ("push", "pull"):
        assert {(case, "contentd"), (case, "docker-registry")} <= measured
    assert "| case |" in run.stdout
