"""What an instance asks of Ray, and how its code travels; no Ray needed."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from torpor.backends.ray import resources
from torpor.backends.ray.code import pack_dir, unpack
from torpor.backends.ray.config import BackendConfigError, ray_config
from torpor.placement.pools import Pool
from torpor.spec import ResourcesSpec

MB = 2**20


class TestRayDemand:
    def test_cpus_and_memory(self) -> None:
        """cpus → CPU, memory_mb → memory in bytes; no GPU key without a GPU."""
        demand = resources.ray_demand(ResourcesSpec(cpus=0.5, memory_mb=256))
        assert demand == {"CPU": 0.5, "memory": 256.0 * MB}
        assert resources.ray_demand(ResourcesSpec(cpus=2), ask_memory=False) == {"CPU": 2.0}

    def test_whole_gpus(self) -> None:
        """gpus: 2 asks for two GPUs."""
        assert resources.ray_demand(ResourcesSpec(gpus=2))["GPU"] == 2.0

    def test_gpu_memory_slice_is_a_fraction(self) -> None:
        """An 8 GB slice of an 80 GB GPU is 0.1 GPU; 10000 MB of 81920 rounds up to 0.1221."""
        assert resources.ray_demand(ResourcesSpec(gpu_memory_mb=8192))["GPU"] == 0.1
        assert resources.ray_demand(ResourcesSpec(gpu_memory_mb=10000))["GPU"] == 0.1221
        assert resources.ray_demand(ResourcesSpec(gpu_memory_mb=24576),
                                    gpu_memory_mb_per_gpu=16384)["GPU"] == 1.0

    def test_bundle_carries_the_pool_marker(self) -> None:
        """The bundle adds pool:P (0.001 of the node's 1000); ``default`` has no marker."""
        demand = {"CPU": 1.0, "memory": 0.0}
        assert resources.bundle(demand, Pool("onprem")) == {"CPU": 1.0, "pool:onprem": 0.001}
        assert resources.bundle(demand, Pool("default")) == {"CPU": 1.0}

    def test_for_display(self) -> None:
        """Ray's internal entries are dropped and memory is shown in MB."""
        shown = resources.for_display({"CPU": 2.0, "memory": 512.0 * MB, "node:10.0.0.1": 1.0,
                                       "CPU_group_0_abc": 1.0, "bundle_group_abc": 1000.0,
                                       "pool:onprem": 1000.0})
        assert shown == {"CPU": 2.0, "memory_mb": 512.0, "pool:onprem": 1000.0}


class TestCodeArchive:
    def test_round_trip(self, tmp_path: Path) -> None:
        """A folder packs without __pycache__ and unpacks under its digest, once."""
        src = tmp_path / "src"
        (src / "pkg" / "__pycache__").mkdir(parents=True)
        (src / "model.py").write_text("X = 1\n")
        (src / "pkg" / "__init__.py").write_text("")
        (src / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"junk")
        data, digest = pack_dir(src)
        dest = unpack(data, "abc", tmp_path / "cache")
        assert dest == tmp_path / "cache" / "abc"
        assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
            "model.py", "pkg", "pkg/__init__.py"]
        (dest / "model.py").write_text("X = 2\n")
        assert unpack(data, "abc", tmp_path / "cache") == dest  # reused, not unpacked again
        assert (dest / "model.py").read_text() == "X = 2\n"
        assert len(digest) == 64

    def test_single_file(self, tmp_path: Path) -> None:
        """A single file (a model's weights) keeps its name inside the archive."""
        weights = tmp_path / "w.bin"
        weights.write_bytes(b"\x00" * 10)
        data, _ = pack_dir(weights)
        assert (unpack(data, "w", tmp_path / "cache") / "w.bin").read_bytes() == b"\x00" * 10

    def test_rejects_paths_outside(self, tmp_path: Path) -> None:
        """An archive entry escaping the folder is refused (tarfile's data filter)."""
        evil = tmp_path / "evil.tgz"
        with tarfile.open(evil, "w:gz") as tar:
            info = tarfile.TarInfo("../escape.txt")
            tar.addfile(info)
        with pytest.raises(tarfile.OutsideDestinationError):
            unpack(evil.read_bytes(), "e", tmp_path / "cache")
        assert not (tmp_path / "escape.txt").exists()


class TestRayConfig:
    def test_local_unless_asked(self) -> None:
        """No --ray and no ``backend: ray``: the local backend (None), whatever pools say."""
        assert ray_config({"pools": [{"name": "onprem"}]}) is None
        assert ray_config(None) is None

    def test_cli_address_wins(self) -> None:
        """--ray ADDRESS chooses Ray and overrides ray_address; pools come sorted by priority."""
        config = ray_config({"ray_address": "10.0.0.1:6379",
                             "pools": [{"name": "cloud", "priority": 1, "elastic": True},
                                       {"name": "onprem", "priority": 10}]}, cli_address="auto")
        assert config is not None
        assert (config.address, [p.name for p in config.pools]) == ("auto", ["onprem", "cloud"])

    def test_backend_ray_from_the_file(self) -> None:
        """``backend: ray`` with ``ray_address`` and no pools: one ``default`` pool."""
        config = ray_config({"backend": "ray", "ray_address": "head.internal:6379"})
        assert config is not None
        assert (config.address, config.pools) == ("head.internal:6379", (Pool("default"),))

    @pytest.mark.parametrize(("raw", "cli", "message"), [
        ({"backend": "k8s"}, None, "backend: must be one of local, ray (got 'k8s')"),
        ({"backend": "ray", "ray_address": "nohost"}, None, "ray_address: must be 'auto' or"),
        ({}, "http://x:1", "--ray: must be 'auto' or"),
        ({"backend": "ray", "pools": [{"name": "a", "priority": "x"}]}, None,
         "pools[0].priority: must be an integer"),
    ])
    def test_errors_name_the_field(self, raw: dict[str, object], cli: str | None,
                                   message: str) -> None:
        """Each mistake is reported with the field it is in."""
        with pytest.raises(BackendConfigError) as err:
            ray_config(raw, cli_address=cli)
        assert str(err.value).startswith(message)
