"""What an instance asks of Ray, and how its code travels; no Ray needed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from torpor.backends import CodeRef
from torpor.backends.ray import resources
from torpor.backends.ray.config import BackendConfigError, ray_config
from torpor.backends.ray.shipping import code_archive, model_archive
from torpor.code import CodeStore, unpack
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


class TestShipping:
    def test_stored_archive_is_shipped_as_is(self, tmp_path: Path) -> None:
        """Code the server keeps (DATA_DIR/code/<digest>.tar.gz) ships byte for byte."""
        src = tmp_path / "src"
        src.mkdir()
        (src / "model.py").write_text("X = 1\n")
        store = CodeStore(tmp_path / "code")
        ref = store.put_dir(src)
        data, digest = code_archive(ref)
        assert (data, digest) == (store.archive(ref.digest), ref.digest)
        assert (unpack(data, digest, tmp_path / "node") / "model.py").read_text() == "X = 1\n"

    def test_unstored_folder_is_packed(self, tmp_path: Path) -> None:
        """A folder with no stored archive is packed; the digest is that of the bytes shipped."""
        (tmp_path / "model.py").write_text("X = 2\n")
        data, digest = code_archive(CodeRef("0" * 64, tmp_path))
        assert digest == hashlib.sha256(data).hexdigest()
        assert (unpack(data, digest, tmp_path / "node") / "model.py").read_text() == "X = 2\n"

    def test_single_model_file_keeps_its_name(self, tmp_path: Path) -> None:
        """A model that is one file unpacks to a folder holding that file under its name."""
        weights = tmp_path / "w.bin"
        weights.write_bytes(b"\x00" * 10)
        data, digest, name = model_archive(CodeRef("1" * 64, weights))
        assert name == "w.bin"
        assert (unpack(data, digest, tmp_path / "node") / name).read_bytes() == b"\x00" * 10


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
        ({"backend": "ray", "ray_node_root": "rel/dir"}, None, "ray_node_root: must be an absolute"),
        ({"backend": "ray", "pools": [{"name": "a", "priority": "x"}]}, None,
         "pools[0].priority: must be an integer"),
    ])
    def test_errors_name_the_field(self, raw: dict[str, object], cli: str | None,
                                   message: str) -> None:
        """Each mistake is reported with the field it is in."""
        with pytest.raises(BackendConfigError) as err:
            ray_config(raw, cli_address=cli)
        assert str(err.value).startswith(message)
