"""EVisRAG core library: data, prompts, parsing, metrics, rewards, training and prediction.

This package never imports prefect, dvc or mlflow: it is the science, testable and reusable alone.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
