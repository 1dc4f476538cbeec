"""lora3d package."""
