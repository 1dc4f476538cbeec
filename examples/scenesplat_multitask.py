"""Two LoRA adapters on one frozen PTv3 base, switched at inference: semantic segmentation and language features.

Run from a clone (CPU, under a minute):

    python examples/scenesplat_multitask.py [OUT_DIR]

1. Writes a tiny random base checkpoint (Pointcept layout) and trains two adapters on it with the
   engine: `semseg` (LoRA + segmentation head) and `lang` (LoRA only, language-feature distillation).
2. Builds ONE base model, loads both adapters into it under their task names, and switches between
   them: the `semseg` adapter gives class logits, the `lang` adapter gives language features that are
   labelled zero-shot against the text-embedding table.
3. Checks that each switched output equals a model that carries only that adapter.

`language_view(seg)` is a language model over the segmentor's own backbone object, so the two
adapters live in the same LoRA layers and only the active one contributes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from engine.families.recipe import resolve_recipe  # noqa: E402
from engine.families.scenesplat.adapters import language_view, load_adapter  # noqa: E402
from engine.families.scenesplat.options import DEMO_TINY_CONFIG  # noqa: E402
from engine.families.scenesplat.task import model_inputs, zero_shot_predict  # noqa: E402
from engine.lora import set_active_adapter  # noqa: E402
from engine.models.ptv3 import PTv3Segmentor  # noqa: E402
from engine.train.trainer import train  # noqa: E402


def recipe_for(task: str, base: Path, out: Path):
    return resolve_recipe({
        "schema_version": 1,
        "name": f"multitask-{task}",
        "model": {"family": "scenesplat", "task": task, "backbone": "demo-tiny", "pretrained": str(base)},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["attn"], "encoder_only": False},
        "data": {"grid_size": 0.1, "synthetic_train": 2, "synthetic_val": 1, "synthetic_points": 700},
        "train": {"max_steps": 3, "batch_size": 1, "lr": 0.02, "device": "cpu"},
        "output": {"dir": str(out / task), "tensorboard": False},
    }, source=f"multitask-{task}")


def main(out: Path) -> dict[str, float]:
    torch.manual_seed(0)
    base = out / "base.pth"
    torch.save({"state_dict": PTv3Segmentor(dict(DEMO_TINY_CONFIG), 6).state_dict()}, base)
    profiles = {task: recipe_for(task, base, out) for task in ("semseg", "lang")}
    for task, profile in profiles.items():
        train(profile, install_signal_handlers=False)
        print(f"trained the {task} adapter into {out / task / 'adapter'}")

    family = profiles["semseg"].family
    seg = family.build_model(profiles["semseg"])          # the one frozen base (+ its head)
    load_adapter(seg, out / "semseg" / "adapter", adapter_name="semseg")
    lang = language_view(seg)                             # same backbone object and adapters, no head
    load_adapter(lang, out / "lang" / "adapter", adapter_name="lang")
    seg.eval()
    lang.eval()

    _, val = family.build_datasets(profiles["semseg"])
    batch = family.collate([val[0]])
    inputs = model_inputs(batch)
    text, names = profiles["lang"].task.text_table()
    with torch.no_grad():
        set_active_adapter(seg, "semseg")
        labels = seg(dict(inputs)).argmax(1)
        set_active_adapter(lang, "lang")
        feat = lang(dict(inputs))
        zero_shot, _ = zero_shot_predict(feat, text)

        only_seg = load_adapter(family.build_model(profiles["semseg"]), out / "semseg" / "adapter").eval()
        only_lang = load_adapter(family.build_model(profiles["lang"]), out / "lang" / "adapter").eval()
        seg_gap = float((only_seg(dict(inputs)).argmax(1) != labels).float().mean())
        lang_gap = float((only_lang(dict(inputs)) - feat).abs().max())
        set_active_adapter(seg, "semseg")  # the same view with the other adapter active
        effect = float((lang(dict(inputs)) - feat).abs().max())
    truth = batch["segment"]
    result = {
        "semseg_accuracy": float((labels == truth).float().mean()),
        "zero_shot_accuracy": float((zero_shot == truth).float().mean()),
        "semseg_switch_mismatch": seg_gap,
        "lang_switch_max_diff": lang_gap,
        "adapter_switch_effect": effect,
    }
    print(f"semseg adapter: {result['semseg_accuracy']:.1%} of points right; "
          f"lang adapter zero-shot over {names}: {result['zero_shot_accuracy']:.1%}")
    print(f"switching matches single-adapter models: label mismatch {seg_gap:.0%}, feature diff {lang_gap:.2e}")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="lora3d-multitask-") as tmp:
            main(Path(tmp))
