"""The trainer tests' fixtures (demo assets, job store, trainer subprocesses), shared."""

from tests.trainer.conftest import demo, demo_model_dir, job_store, start_trainer

__all__ = ["demo", "demo_model_dir", "job_store", "start_trainer"]
