"""GPUs and limits on real processes: two declared GPUs, a burst packed by memory slices, a spec
refused at deploy, and a Model killed for passing its memory_mb while others keep serving."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, FUNCTIONS, make_function, torpor_cli
from torpor.backends.local.freezer import CGROUP_ROOT

pytestmark = pytest.mark.timeout(90)

TWO_GPUS = "gpus:\n  - {name: T4, memory_mb: 16384}\n  - {name: T4, memory_mb: 16384}\n"


def with_config(tmp_path: Path, text: str) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.yaml").write_text(text, encoding="utf-8")
    return data_dir


class TestGpuBurst:
    def test_burst_fills_two_gpus_then_waits(self, make_server: Any, tmp_path: Path) -> None:
        """5 concurrent requests to a 6144 MB function on two 16384 MB GPUs: exactly four
        instances, two per GPU, each seeing its own device and slice; the fifth request waits
        (with the reason in the events) and is served when an instance frees."""
        srv = make_server(data_dir=with_config(tmp_path, TWO_GPUS))
        srv.deploy(make_function(tmp_path, "gpuenv"))
        with ThreadPoolExecutor(5) as pool:
            responses = list(pool.map(lambda n: srv.invoke("gpuenv", {"sleep_s": 3, "n": n}),
                                      range(5)))
        assert [r.status_code for r in responses] == [200] * 5, srv.log()[-4000:]
        bodies = [r.json() for r in responses]
        seen = {b["instance"]: b for b in bodies}
        assert len(seen) == 4  # the fifth request was served by one of the four
        assert collections.Counter(b["cuda_visible_devices"] for b in seen.values()) == {
            "0": 2, "1": 2}
        assert {(b["gpu_memory_mb"], b["gpu_memory_fraction"]) for b in seen.values()} == {
            ("6144", "0.3750")}
        placements = {i["id"]: i["placement"] for i in srv.instances("gpuenv")}
        assert placements == {
            name: {"node": "local", "gpus": [int(b["cuda_visible_devices"])], "gpu_memory_mb": 6144}
            for name, b in seen.items()}
        events = [e["message"] for e in srv.function("gpuenv")["events"]]
        assert "waiting for GPU memory: need 6144 MB, largest free 4096 MB (gpu 0)" in events
        gpus = srv.http.get("/api/v1/nodes").json()[0]["gpus"]
        assert [(g["index"], g["name"], g["memory_mb"], g["allocated_mb"], len(g["instances"]))
                for g in gpus] == [(0, "T4", 16384, 12288, 2), (1, "T4", 16384, 12288, 2)]
        print("burst placement:", sorted((i, p["gpus"], p["gpu_memory_mb"])
                                         for i, p in placements.items()))

    def test_whole_gpus_exclude_slices_and_the_wait_times_out(self, make_server: Any,
                                                               tmp_path: Path) -> None:
        """A gpus: 2 instance takes both GPUs whole; a slice function then waits, says why in
        torpor get, and its request gets 504 after queue.timeout_s."""
        srv = make_server(data_dir=with_config(tmp_path, TWO_GPUS))
        srv.deploy(make_function(tmp_path, "gpuenv", name="whole",
                                 resources={"gpus": 2, "gpu_memory_mb": 0}))
        whole = srv.invoke("whole", {})
        assert whole.status_code == 200
        assert (whole.json()["cuda_visible_devices"], whole.json()["gpu_memory_mb"]) == (
            "0,1", "32768")
        srv.deploy(make_function(tmp_path, "gpuenv", queue={"max_queued": 5, "timeout_s": 1.5}))
        waited = srv.invoke("gpuenv", {})
        assert waited.status_code == 504
        assert srv.function("gpuenv")["waiting"] == (
            "waiting for GPU memory: need 6144 MB, largest free 0 MB (gpu 0)")
        assert srv.instances("gpuenv") == []
        shown = torpor_cli("get", "gpuenv", server=srv.url).stdout
        assert "waiting: waiting for GPU memory: need 6144 MB, largest free 0 MB (gpu 0)" in shown
        nodes = torpor_cli("nodes", server=srv.url).stdout
        print(nodes)
        gpu_rows = [line.replace("│", " ").split() for line in nodes.splitlines() if " T4 " in line]
        assert [row[:5] for row in gpu_rows] == [["local", "0", "T4", "16384", "16384"],
                                                ["local", "1", "T4", "16384", "16384"]]

    def test_slice_larger_than_every_gpu_refused_at_deploy(self, make_server: Any,
                                                           tmp_path: Path) -> None:
        """A 32768 MB slice on 16384 MB GPUs is refused at deploy, naming field and device."""
        srv = make_server(data_dir=with_config(tmp_path, TWO_GPUS))
        folder = make_function(tmp_path, "gpuenv", resources={"gpu_memory_mb": 32768})
        from torpor.code import pack_dir
        from torpor.spec import load_spec_file

        _, raw, base_dir = load_spec_file(folder)
        archive = pack_dir(base_dir)
        srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data)
        response = srv.http.post("/api/v1/functions", json={"spec": raw, "code": archive.digest})
        assert response.status_code == 422
        assert response.json()["errors"] == [
            "resources.gpu_memory_mb: 32768 MB is larger than every GPU (largest: gpu 0, T4, "
            "16384 MB)"]


memory_cgroups = pytest.mark.skipif(
    not (CGROUP_ROOT / "memory" / "cgroup.procs").exists()
    and not (CGROUP_ROOT / "cgroup.controllers").exists(),
    reason="no cgroup memory controller on this machine")


@memory_cgroups
class TestMemoryLimit:
    def test_out_of_memory_is_the_failure_reason(self, make_server: Any, tmp_path: Path) -> None:
        """A Model allocating 600 MB with memory_mb: 256 is killed by the kernel; torpor reports
        'out of memory (memory_mb 256)' while another function keeps serving."""
        srv = make_server([FUNCTIONS / "hog", EXAMPLES / "echo"])
        if srv.http.get("/healthz").json().get("limits") == "none":
            pytest.skip("cgroups are not writable here")
        assert srv.invoke("hog", {"mb": 16}).status_code == 200
        response = srv.invoke("hog", {"mb": 600})
        assert response.status_code == 502
        assert response.json()["error"].endswith("failed mid-request: out of memory (memory_mb 256)")
        failed = srv.wait_for(lambda: [i for i in srv.instances("hog", all=True) if i["failure"]],
                              what="the OOM failure")
        assert failed[0]["failure"] == "out of memory (memory_mb 256)"
        events = [e["message"] for e in srv.function("hog")["events"]]
        crash = [m for m in events if "out of memory" in m]
        assert crash == [f"instance {failed[0]['id']} out of memory (memory_mb 256)"]
        print("OOM event:", crash[0], "| 502 body:", response.json())
        assert srv.invoke("echo", {"x": 1}).status_code == 200
        assert srv.invoke("hog", {"mb": 16}).status_code == 200  # a new instance serves

    @pytest.mark.parametrize("templates", [True, False], ids=["forked", "spawned"])
    def test_setup_past_the_limit_fails_the_cold_start(self, make_server: Any, tmp_path: Path,
                                                       templates: bool) -> None:
        """Forked or spawned, an instance is in its cgroup before setup(): 600 MB there fails the
        cold start with the out-of-memory reason (503), backed off like any failed start."""
        srv = make_server()
        if srv.http.get("/healthz").json().get("limits") == "none":
            pytest.skip("cgroups are not writable here")
        srv.deploy(make_function(tmp_path, "hog", env={"SETUP_MB": "600"},
                                 runtime={"handler": "model:Hog", "templates": templates}))
        response = srv.invoke("hog", {})
        assert response.status_code == 503
        assert "failed to start: out of memory (memory_mb 256)" in response.json()["error"]
        failed = srv.instances("hog", all=True)
        assert [i["failure"] for i in failed] == ["out of memory (memory_mb 256)"]
