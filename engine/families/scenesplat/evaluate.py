"""Provides SceneSplat's `lora3d eval`: base vs adapters, full-scene metrics and the per-class table.

For each model (the base, then each adapter, switched on one base in memory):

1. The task's evaluation as the trainer runs it (`engine.families.evaluation.task_metrics`): the
   validation transforms' voxel points, the run's micro-batch. On the run's validation split this
   reproduces the last eval event of a run (its `adapter/`).
2. Full-scene evaluation, as Pointcept's tester does: every Gaussian gets the prediction of its voxel
   through the grid-sampling inverse (`scene_inference`), and the confusion matrix counts every labelled
   Gaussian, not only the voxel points. semseg: argmax of the softmax; lang: SceneSplat's zero-shot
   labelling (sigmoid of the cosine to the text embeddings, argmax, threshold), without kNN voting.
   mIoU, mAcc, allAcc, fg-mIoU/fg-mAcc and per-class IoU and accuracy (task.py's metric conventions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from engine.families.evaluation import (
    EvalReport,
    LoadedModels,
    ModelResult,
    adapter_names,
    autocast,
    load_models,
    load_source,
    pick_device,
    task_metrics,
)
from engine.families.scenesplat.adapters import load_adapter
from engine.families.scenesplat.full_scene import (
    eval_dataset,
    raw_sample,
    scene_count,
    score_function,
    settings_for,
)
from engine.families.scenesplat.scene_inference import predict_scene
from engine.families.scenesplat.task import confusion_matrix, segmentation_metrics
from engine.lora.switch import BASE


def load_scenesplat_adapter(model: torch.nn.Module, path: Path, name: str) -> None:
    """`AdapterSet` loader: LoRA plus the segmentation head saved beside it."""
    load_adapter(model, path, adapter_name=name)


def base_is_meaningful(models: LoadedModels) -> str | None:
    """Why the base alone would not be a fair row (a semseg head the checkpoint did not provide), or None."""
    recipe = models.recipe
    if recipe.options.task != "semseg":
        return None
    head = (getattr(models.model, "lora3d_base", None) or {}).get("head", "none")
    if head == "loaded":
        return None
    return (f"base: left out: its checkpoint has no segmentation head for these {recipe.options.num_classes} classes "
            f"(head {head}), so it would be scored with a random head; pass --base to include it anyway")


def class_accuracy(matrix: torch.Tensor, names: list[str]) -> dict[str, float]:
    """`acc/<name>`: correct / labelled per class, for classes with labelled points."""
    c = matrix.shape[0]
    tp = torch.diagonal(matrix[:, :c]).double()
    gt = matrix.sum(1).double()
    return {f"acc/{names[i]}": float(tp[i] / gt[i]) for i in range(c) if gt[i] > 0}


def full_scene_metrics(models: LoadedModels, dataset: Any, fragments: bool = False, rotations: int = 1,
                       max_points: int | None = None, memory_gb: float | None = None) -> tuple[dict[str, float], list[str]]:
    """The active model's metrics over every Gaussian of every scene of `dataset` (see the module docstring).

    Returns:
        The metrics (`miou`, `macc`, `allacc`, `fg_miou`, `fg_macc`, `iou/<class>`, `acc/<class>`) and notes
        (chunking, the Gaussians counted).
    """
    recipe = models.recipe
    score, layout = score_function(recipe)
    names = layout.class_names
    c = len(names)
    matrix = torch.zeros(c, c + 1, dtype=torch.int64)
    notes: list[str] = []
    gaussians = 0
    for i in range(scene_count(dataset)):
        sample = raw_sample(dataset, i)
        settings, budget_notes = settings_for(recipe, models.device, len(sample["coord"]), fragments, rotations,
                                              max_points, memory_gb)
        result = predict_scene(models.model, sample, score, settings, models.device,
                               autocast(recipe, models.device))
        labels, _ = layout.labels(result.scores)
        matrix += confusion_matrix(torch.from_numpy(labels), torch.as_tensor(sample["segment"]), c,
                                   recipe.profile.model.ignore_index)
        gaussians += len(labels)
        notes += [f"{sample.get('name', i)}: {n}" for n in budget_notes + result.notes]
    metrics = segmentation_metrics(matrix, names, tuple(recipe.profile.model.fg_exclude))
    metrics.update(class_accuracy(matrix, names))
    labelled = int(matrix.sum())
    if labelled == 0:
        notes.append("no labelled Gaussian in the evaluated scenes: every metric is 0")
    notes.append(f"{gaussians} Gaussians in {scene_count(dataset)} scene(s), {labelled} of them labelled")
    return metrics, notes


def run_eval(args: argparse.Namespace, console: Console | None = None) -> EvalReport:
    """`lora3d eval` for a scenesplat run (see `eval_arguments` in commands.py)."""
    console = console or Console(highlight=False, soft_wrap=True, stderr=bool(args.json))
    source = load_source(args.run_dir)
    recipe = source.recipe
    device = pick_device(args.device)
    dataset, data_label = eval_dataset(recipe, args.split, Path(args.scenes) if args.scenes else None)
    paths = [Path(a) for a in args.adapter] if args.adapter else list(source.adapters)
    models = load_models(recipe, paths, device, load_scenesplat_adapter)
    notes = list(source.notes) + models.notes
    variants = adapter_names(paths)
    skip_base = base_is_meaningful(models)
    if args.no_base:
        pass
    elif skip_base and not args.base:
        notes.append(skip_base)
    else:
        variants.insert(0, BASE)
    if not variants:
        notes.append("nothing to evaluate: no adapter and the base left out")
    task = recipe.task
    _, layout = score_function(recipe)
    view = "fragments (Pointcept test mode)" if args.fragments else "voxel predictions carried to every Gaussian"
    report = EvalReport(
        title=f"{recipe.profile.name or 'scenesplat'}: {recipe.options.task} on {data_label}, full scene ({view})",
        primary_metric=task.primary_metric,
        class_names=layout.class_names,
        settings={"data": data_label, "device": str(device), "grid_size": recipe.profile.data.grid_size,
                  "fragments": bool(args.fragments), "rotations": args.rotations, "max_points": args.max_points,
                  "profile": recipe.source, "training_metrics": not args.no_training_metrics},
        notes=notes,
    )
    for name in variants:
        model = models.adapters.use(name)
        console.print(f"evaluating {name} ...")
        training = {} if args.no_training_metrics else task_metrics(recipe, model, dataset, device)
        metrics, scene_notes = full_scene_metrics(models, dataset, args.fragments, args.rotations, args.max_points,
                                                  args.memory_gb)
        counted = scene_notes.pop()  # the same for every model
        if counted not in report.notes:
            report.notes.append(counted)
        report.notes += [n for n in dict.fromkeys(f"{name}: {n}" for n in scene_notes) if n not in report.notes]
        report.models.append(ModelResult(name, models.adapters.paths[name], metrics, training))
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    """`lora3d eval RUN_DIR [...]`: prints the tables (or JSON) and writes the CSV/JSON files asked for."""
    report = run_eval(args)
    written = report.write(Path(args.json_out) if args.json_out else None, Path(args.csv) if args.csv else None)
    console = Console(highlight=False, soft_wrap=True, stderr=bool(args.json))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        report.render(console)
    for path in written:
        console.print(f"written: {path}")
    return 0


__all__ = ["class_accuracy", "cmd_eval", "full_scene_metrics", "load_scenesplat_adapter", "run_eval"]
