"""Fine-tune and evaluate: LoRA fine-tuning, metrics and evaluation, sweeps over strategies, difficulty calibration."""
