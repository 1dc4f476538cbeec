"""Provides the lora3d engine: models, LoRA, families, trainer, memory planner and CLI."""
