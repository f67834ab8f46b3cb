"""Orchestration around the DVC stages: Prefect flows (pipeline.py), serving them (serve.py),
pseudo-label versions (versions.py). Stage logic lives in tasks/ only."""
