"""File names inside a run folder (one place, read by every stage)."""

CONFIG_FILE = "config.json"
SAE_FILE = "sae.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
TRAINING_PLOT = "training.png"
EVAL_FILE = "eval.json"
DENSITY_PLOT = "density.png"
