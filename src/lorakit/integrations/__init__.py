"""Glue for training libraries that expect PEFT models; each module imports nothing from the library it serves.

trl.py    `reference_model`: DPOTrainer's reference model as the base model, sharing the policy's tensors
"""
