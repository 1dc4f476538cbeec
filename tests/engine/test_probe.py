"""GPU probe: CPU mode without a driver, faked NVML cards mapped to the documented tiers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from engine.hardware import probe_hardware
from engine.memory.tiers import GIB, recommend_tier, tier_for_memory
from tests.conftest import REPO

MIB = 1024**2


class FakeNvml:
    def __init__(self, cards, fail_init=False):
        self.cards = cards  # list of (name, total_bytes, uuid)
        self.fail_init = fail_init

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return b"550.54"

    def nvmlDeviceGetCount(self):
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.cards[h][0]

    def nvmlDeviceGetMemoryInfo(self, h):
        total = self.cards[h][1]
        return SimpleNamespace(total=total, free=total - 512 * MIB, used=512 * MIB)

    def nvmlDeviceGetUUID(self, h):
        return self.cards[h][2]

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (8, 9)


# Sizes as the cards report them (MiB), slightly under their marketed size.
CARDS = {
    "RTX 3060 12GB": 12288 * MIB,
    "RTX 4080 16GB": 16376 * MIB,
    "RTX 4090 24GB": 24564 * MIB,
    "A100 80GB": 81920 * MIB,
    "RTX 3050 8GB": 8192 * MIB,
}


@pytest.mark.parametrize(
    "card, tier, rank, batch, ckpt",
    [
        ("RTX 3050 8GB", "<12GB", 4, 1, True),
        ("RTX 3060 12GB", "12-16GB", 8, 2, True),
        ("RTX 4080 16GB", "16-24GB", 16, 4, False),
        ("RTX 4090 24GB", "24GB+", 32, 8, False),
        ("A100 80GB", "24GB+", 32, 16, False),
    ],
)
def test_tiers_from_faked_nvml(card, tier, rank, batch, ckpt):
    hw = probe_hardware(FakeNvml([(card, CARDS[card], "GPU-aaaa")]))
    assert not hw.cpu_mode
    assert hw.gpus[0].name == card and hw.gpus[0].total_bytes == CARDS[card]
    assert hw.gpus[0].driver == "550.54" and hw.gpus[0].compute_capability == "8.9"
    rec = recommend_tier(hw)
    assert (rec.tier, rec.rank, rec.batch_size, rec.gradient_checkpointing) == (tier, rank, batch, ckpt)
    assert rec.reason
    assert (rec.warning is not None) == (tier == "<12GB")


def test_no_driver_is_cpu_mode():
    hw = probe_hardware(FakeNvml([], fail_init=True))
    assert hw.cpu_mode and hw.gpus == []
    assert "no GPU: CPU mode" in hw.note
    assert tier_for_memory(None).tier == "cpu"


def test_cuda_visible_devices_reorders(monkeypatch):
    nvml = FakeNvml([("A", 24 * GIB, "GPU-1111"), ("B", 12 * GIB, "GPU-2222"), ("C", 16 * GIB, "GPU-3333")])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-1111")
    hw = probe_hardware(nvml)
    assert [(g.index, g.name) for g in hw.gpus] == [(0, "C"), (1, "A")]
    assert recommend_tier(hw).tier == "16-24GB"  # the smallest visible card decides
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe_hardware(nvml).cpu_mode
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")  # CUDA stops at the first invalid index
    assert [g.name for g in probe_hardware(nvml).gpus] == ["B"]


def test_probe_json_cli_on_this_machine():
    out = subprocess.run([sys.executable, "-m", "engine", "probe", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("gpus", "cpu_mode", "host_ram_bytes", "accelerators", "recommendation"):
        assert key in data
    assert set(data["recommendation"]) >= {"rank", "batch_size", "gradient_checkpointing", "reason"}
    assert data["host_ram_bytes"] > 0
    assert data["cpu_mode"] == (data["gpus"] == [])
    assert "Traceback" not in out.stderr


def test_fingerprint_and_smaller_card_warning(tmp_path):
    from engine.families.recipe import resolve_recipe
    from engine.memory.fingerprint import check_hardware, hardware_fingerprint
    from tests.conftest import toy_profile_dict

    big = probe_hardware(FakeNvml([("RTX 4090 24GB", CARDS["RTX 4090 24GB"], "GPU-a")]))
    small = probe_hardware(FakeNvml([("RTX 3060 12GB", CARDS["RTX 3060 12GB"], "GPU-b")]))
    data = toy_profile_dict(tmp_path, train={"batch_size": 8, "grad_accum": 1})
    data["hardware"] = hardware_fingerprint(big).model_dump(mode="json")
    profile = resolve_recipe(data).profile
    assert profile.hardware.tier == "24GB+" and profile.hardware.gpu_total_gb == 24.0
    assert check_hardware(profile, big) == []
    (warning,) = check_hardware(profile, small)
    assert "planned for 24.0 GB" in warning and "12.0 GB" in warning
    # keeps the effective batch of 8 with the 12 GB tier's batch 2
    assert "train.batch_size=2 train.grad_accum=4" in warning and "lora.r=8" in warning
