"""Orchestration around the DVC stages: Prefect flows (pipeline.py), serving them (serve.py), the
flow-to-DVC command mapping (dvc_commands.py). Stage logic lives in tasks/ and the library packages;
user commands (predict, label export, versions) in wsss/commands/."""
