"""The LoRA summary: numbers, the guide's printed block, the per-module table, JSON-readiness."""

from __future__ import annotations

import json
import re

from engine.lora import (
    format_summary_block,
    inject_lora_to_ptv3,
    lora_summary,
    mark_only_lora_as_trainable,
    merge_lora_weights,
    print_lora_summary,
)
from tests.lora.conftest import randomise_lora, standin_small


def test_summary_numbers_and_rows():
    model = standin_small()
    base_total = sum(p.numel() for p in model.parameters())
    inject_lora_to_ptv3(model, r=4, target_stages=[3, 4])
    mark_only_lora_as_trainable(model, bias="lora_only")
    summary = lora_summary(model)
    # enc3: C=16, 2 blocks; enc4: C=32, 1 block; per block r * (C+3C) + r * (C+C) = 24C.
    lora = 2 * 24 * 16 + 24 * 32
    biases = 2 * (48 + 16) + (96 + 32)
    assert summary["lora_params"] == lora
    assert summary["total_params"] == base_total + lora
    assert summary["trainable_params"] == lora + biases
    assert summary["lora_ratio_percent"] == 100 * lora / (base_total + lora)
    assert summary["lora_bytes"] == 4 * lora
    row = next(r for r in summary["rows"] if r["module"] == "enc.enc4.block0.attn.qkv")
    assert row == {"module": "enc.enc4.block0.attn.qkv", "kind": "lora", "adapter": "default",
                   "shape": [96, 32], "rank": 4, "params": 4 * (32 + 96), "bytes": 16 * (32 + 96)}
    assert len(summary["rows"]) == 6
    assert json.loads(json.dumps(summary)) == summary


def test_printed_block_matches_the_guide(capsys):
    model = inject_lora_to_ptv3(standin_small(), r=2, target_stages=[4])
    summary = print_lora_summary(model)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:8] == format_summary_block(summary).splitlines()
    assert lines[0] == lines[2] == lines[7] == "=" * 60
    assert lines[1] == "LoRA Parameter Summary"
    assert lines[3] == f"Total parameters: {summary['total_params']:,}"
    assert lines[4] == "LoRA parameters: 384"
    assert lines[5] == "Trainable parameters: 384"
    assert re.fullmatch(r"LoRA ratio: \d+\.\d\d%", lines[6])
    assert lines[6] == f"LoRA ratio: {100 * 384 / summary['total_params']:.2f}%"
    assert "enc.enc4.block0.attn.qkv" in out and "96x32" in out


def test_guide_example_numbers_format_with_separators():
    block = format_summary_block({"total_params": 31_456_789, "lora_params": 245_760,
                                  "trainable_params": 245_760, "lora_ratio_percent": 0.78})
    assert block.splitlines()[3:7] == ["Total parameters: 31,456,789", "LoRA parameters: 245,760",
                                       "Trainable parameters: 245,760", "LoRA ratio: 0.78%"]


def test_prompt_rows_and_merged_summary(capsys):
    model = inject_lora_to_ptv3(standin_small(), r=2, target_stages=[4], enable_prompt=True)
    summary = lora_summary(model)
    prompt_rows = [r for r in summary["rows"] if r["kind"] == "prompt"]
    # enc4 (C=32): qkv 32->32->96, proj 32->32->32.
    assert {r["module"]: r["params"] for r in prompt_rows} == {
        "lora3d_prompt.enc4.qkv": 32 * 32 + 32 + 32 * 96 + 96,
        "lora3d_prompt.enc4.proj": 32 * 32 + 32 + 32 * 32 + 32,
    }
    assert summary["lora_params"] == 2 * (32 + 96) + 2 * (32 + 32) + sum(r["params"] for r in prompt_rows)
    randomise_lora(model)
    merge_lora_weights(model)
    capsys.readouterr()
    merged = print_lora_summary(model)
    out = capsys.readouterr().out
    assert merged["merged"] is True and merged["adapters"] == []
    assert merged["lora_params"] == merged["prompt_kept_params"] == sum(r["params"] for r in prompt_rows)
    kept = (32 * 32 + 32 + 32 * 96 + 96) + (32 * 32 + 32 + 32 * 32 + 32)
    assert f"LoRA folded into the base weights; prompt MLPs kept ({kept:,} parameters)." in out
