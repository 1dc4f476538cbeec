"""Tests several adapters on one base: switching never reloads or moves the base, and equals single-adapter models."""

from __future__ import annotations

import torch

from engine.families.evaluation import load_models, load_source
from engine.families.scenesplat.adapters import load_adapter
from engine.families.scenesplat.evaluate import load_scenesplat_adapter
from engine.families.scenesplat.task import model_inputs
from engine.lora.switch import BASE


def _second_adapter(recipe, first, folder):
    """Adapter B: adapter A's LoRA and head moved by fixed noise (another "task" on the same base)."""
    model = load_adapter(recipe.family.build_model(recipe), first)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or name.startswith("seg_head."):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.seg_head.requires_grad_(True)  # the head is saved with the adapter when it trained
    recipe.family.save_adapter(model, folder, {"family": "scenesplat", "task": "semseg"})
    return folder


def test_adapters_switch_on_one_base_without_reloading_it(semseg_run, tmp_path):
    recipe = load_source(semseg_run).recipe
    family = recipe.family
    first = semseg_run / "adapter"
    second = _second_adapter(recipe, first, tmp_path / "b")
    models = load_models(recipe, [first, second], torch.device("cpu"), load_scenesplat_adapter)
    assert models.adapters.names == [BASE, "adapter", "b"]
    model = models.model
    base_storage = {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n}
    _, val = family.build_datasets(recipe)
    inputs = model_inputs(family.collate([val[0]]))

    with torch.no_grad():
        outputs = {name: models.adapters.use(name)(dict(inputs)) for name in (BASE, "adapter", "b")}
        again = models.adapters.use("adapter")(dict(inputs))
        base_again = models.adapters.use(BASE)(dict(inputs))
        alone = {
            BASE: family.build_model(recipe).eval()(dict(inputs)),
            "adapter": load_adapter(family.build_model(recipe), first).eval()(dict(inputs)),
            "b": load_adapter(family.build_model(recipe), second).eval()(dict(inputs)),
        }

    assert {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n} == base_storage
    for name in (BASE, "adapter", "b"):
        torch.testing.assert_close(outputs[name], alone[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(again, outputs["adapter"], rtol=0, atol=0)
    torch.testing.assert_close(base_again, outputs[BASE], rtol=0, atol=0)
    assert (outputs["adapter"] - outputs["b"]).abs().max() > 1e-3  # the two adapters do differ
