"""tuneforge for Kubeflow Pipelines: `fine_tune`, a component that runs a fine-tuning job.

    from tuneforge_kfp import fine_tune

See docs/kubeflow.md for a pipeline, the API key secret and the outputs.
"""

from tuneforge_kfp.component import BASE_IMAGE, fine_tune

__all__ = ["BASE_IMAGE", "fine_tune"]
__version__ = "0.1.0"
