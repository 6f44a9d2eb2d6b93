"""The file MLflow runs to build the scoring model when it loads one (MLflow's "models from code":
nothing pickled). Only pipeline/serving.py refers to it; importing it does nothing else useful."""
from mlflow.models import set_model

from pipeline.scoring.serving import RawInputModel

set_model(RawInputModel())
