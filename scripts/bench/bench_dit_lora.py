"""Provides a benchmark of LoRA vs full fine-tuning of a reduced TripoSG/MIDI DiT, and merged vs base inference.

Each measurement runs in its own spawned process, so peak memory is not polluted by the previous one
(on CPU the allocator rarely returns freed pages to the OS). Peak memory is
`torch.cuda.max_memory_allocated` on CUDA and the peak resident set size (psutil, sampled) on CPU; both
are reported above the baseline after the model is built, i.e. gradients + optimizer state + activations.

    python scripts/bench/bench_dit_lora.py --quick
    python scripts/bench/bench_dit_lora.py --width 512 --layers 21 --tokens 2048 --device cuda
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class BenchConfig:
    """Sizes of the reduced DiT and of the batch (one scene of `instances` objects per sample group)."""

    width: int = 128
    heads: int = 2
    layers: int = 9
    tokens: int = 256
    cond_tokens: int = 16
    cond_dim: int = 64
    scenes: int = 1
    instances: int = 2
    rank: int = 8
    steps: int = 5
    warmup: int = 2
    device: str = "auto"
    seed: int = 0
    threads: int = 0  # CPU threads of each measurement process; 0 keeps torch's default


QUICK = {"width": 64, "heads": 2, "layers": 5, "tokens": 32, "cond_tokens": 4, "cond_dim": 16, "steps": 2,
         "warmup": 1}


def _device(cfg: BenchConfig):
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _build_model(cfg: BenchConfig):
    import torch

    from engine.models.dit import TripoSGDiTModel

    torch.manual_seed(cfg.seed)
    model = TripoSGDiTModel(num_attention_heads=cfg.heads, width=cfg.width, in_channels=64, num_layers=cfg.layers,
                            cross_attention_dim=cfg.cond_dim, cross_attention_2_dim=cfg.cond_dim)
    # MIDI's choice (blocks 8-12 of 21) scaled to this depth: up to five blocks around the middle.
    middle = cfg.layers // 2
    model.set_multi_instance_attention(range(max(0, middle - 2), min(cfg.layers, middle + 3)))
    return model


def _inject_lora(model, rank: int):
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    return inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), model)


def _batch(cfg: BenchConfig, device):
    import torch

    from engine.models.dit import add_noise, flow_target, sample_logit_normal_sigmas

    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = cfg.scenes * cfg.instances
    x0 = torch.randn(n, cfg.tokens, 64, generator=g)
    noise = torch.randn(n, cfg.tokens, 64, generator=g)
    sigma = sample_logit_normal_sigmas(cfg.scenes, generator=g).repeat_interleave(cfg.instances)
    inputs = {
        "hidden_states": add_noise(x0, noise, sigma).to(device),
        "timestep": (sigma * 1000).to(device),
        "encoder_hidden_states": torch.randn(n, 1, cfg.cond_dim, generator=g).to(device),
        "encoder_hidden_states_2": torch.randn(n, cfg.cond_tokens, cfg.cond_dim, generator=g).to(device),
        "attention_kwargs": {"num_instances": cfg.instances},
    }
    return inputs, flow_target(x0, noise).to(device)


class _PeakMemory:
    """Peak memory above the level at `start()`, in MiB: CUDA allocator stats or sampled process RSS."""

    def __init__(self, device) -> None:
        self.device = device
        self._stop = threading.Event()
        self._peak = 0
        self._base = 0
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(0.002)

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return
        self._base = self._peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float]:
        """Returns (peak above start, absolute peak) in MiB."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._peak, self._rss())
        return (peak - self._base) / 2**20, peak / 2**20


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _train(cfg: BenchConfig, mode: str) -> dict:
    """One training measurement: mode is `full`, `lora` or `lora_ckpt` (LoRA + gradient checkpointing)."""
    import torch

    device = _device(cfg)
    model = _build_model(cfg)
    if mode.startswith("lora"):
        model = _inject_lora(model, cfg.rank)
    if mode.endswith("ckpt"):
        model.enable_gradient_checkpointing()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs, target = _batch(cfg, device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(**inputs).sample, target)
        loss.backward()
        optimizer.step()
        return loss.item()

    _sync(device)
    memory = _PeakMemory(device)
    memory.start()
    times = []
    for i in range(cfg.warmup + cfg.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t0)
    extra_mb, peak_mb = memory.stop()
    return {"mode": mode, "step_s": statistics.median(times), "extra_mb": extra_mb, "peak_mb": peak_mb,
            "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters())}


def _merge_and_unload(model) -> None:
    """Folds every LoRA delta into its base Linear and puts the plain Linear back in place."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.get_base_layer())


def _infer(cfg: BenchConfig) -> dict:
    """Forward time of the base model, the LoRA model (unmerged) and the merged model; merged-output check.

    The three models live side by side and are timed round-robin (base, unmerged, merged, then rotating),
    so a change in machine load hits all three alike; medians of `steps` calls after `warmup` rounds.
    """
    import copy

    import torch

    device = _device(cfg)
    inputs, _ = _batch(cfg, device)
    base = _build_model(cfg).to(device).eval()
    lora = _inject_lora(copy.deepcopy(base), cfg.rank)
    torch.manual_seed(cfg.seed + 2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)  # a trained adapter is non-zero
    lora.to(device).eval()
    merged = copy.deepcopy(lora)
    _merge_and_unload(merged)
    models = {"base": base, "lora": lora, "merged": merged}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.no_grad():
        for r in range(cfg.warmup + cfg.steps):
            for name in names[r % 3:] + names[: r % 3]:
                t0 = time.perf_counter()
                models[name](**inputs)
                _sync(device)
                if r >= cfg.warmup:
                    times[name].append(time.perf_counter() - t0)
        diff = (merged(**inputs).sample - lora(**inputs).sample).abs().max().item()
    return {"base_s": statistics.median(times["base"]), "lora_s": statistics.median(times["lora"]),
            "merged_s": statistics.median(times["merged"]), "merge_max_abs_diff": diff}


def _child(job: str, cfg_dict: dict, queue) -> None:
    import torch

    cfg = BenchConfig(**cfg_dict)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # this measurement process only
    try:
        queue.put(_infer(cfg) if job == "infer" else _train(cfg, job))
    except Exception as exc:  # reported by the parent, which keeps going with the other jobs
        queue.put({"mode": job, "error": f"{type(exc).__name__}: {exc}"})


def _run_isolated(job: str, cfg: BenchConfig) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, asdict(cfg), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 timed steps (smoke test)")
    for field, default in asdict(BenchConfig()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=None,
                            help=f"default {default} ({QUICK.get(field, default)} with --quick)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    values = {**asdict(BenchConfig()), **(QUICK if args.quick else {})}
    values.update({k: v for k, v in vars(args).items() if k in values and v is not None})
    cfg = BenchConfig(**values)

    train = {job: _run_isolated(job, cfg) for job in ("full", "lora", "lora_ckpt")}
    infer = _run_isolated("infer", cfg)
    results = {"config": asdict(cfg), "train": train, "infer": infer}

    print(f"DiT width={cfg.width} layers={cfg.layers} heads={cfg.heads} tokens={cfg.tokens} "
          f"batch={cfg.scenes}x{cfg.instances} rank={cfg.rank} device={cfg.device}")
    print(f"{'mode':<10} {'trainable':>12} {'step ms':>10} {'extra MiB':>10} {'peak MiB':>10} "
          f"{'time/full':>10} {'extra/full':>10}")
    full = train["full"]
    for job, r in train.items():
        if "error" in r:
            print(f"{job:<10} failed: {r['error']}")
            continue
        time_ratio = r["step_s"] / full["step_s"] if "step_s" in full else float("nan")
        mem_ratio = r["extra_mb"] / full["extra_mb"] if full.get("extra_mb") else float("nan")
        print(f"{job:<10} {r['trainable']:>12,} {1e3 * r['step_s']:>10.1f} {r['extra_mb']:>10.1f} "
              f"{r['peak_mb']:>10.1f} {time_ratio:>10.2f} {mem_ratio:>10.2f}")
    if "error" in infer:
        print(f"inference failed: {infer['error']}")
    else:
        print(f"inference ms: base {1e3 * infer['base_s']:.1f}, lora unmerged {1e3 * infer['lora_s']:.1f}, "
              f"merged {1e3 * infer['merged_s']:.1f}; merged/base {infer['merged_s'] / infer['base_s']:.2f}, "
              f"unmerged/base {infer['lora_s'] / infer['base_s']:.2f}; "
              f"max |merged - unmerged| = {infer['merge_max_abs_diff']:.2e}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
