"""STAND-IN for sd-scripts' networks/lora.py: importable, nothing else."""
