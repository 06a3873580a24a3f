"""The served captioner, as MLflow builds it: this file is the logged model's code (MLflow's "models from code").

Loading a logged captioner runs this file and reads the artifact `captioner` (config and vocabulary as JSON, the decoder
as a .keras file loaded in Keras safe mode); nothing is unpickled. Input: a column `image` (or the only column) of
image bytes or base64 text, one image per row; output: a column `caption`. Parameter `beam_width`: 1 (greedy) to
requests.MAX_BEAM_WIDTH, 0 for the model's own. The limits and the switch for server paths are in
captioning/serving/requests.py.
"""
import mlflow
import pandas as pd

from captioning.serving.requests import RequestRules, beam_width


class CaptionerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from captioning.decoding.captioner import Captioner

        self.rules = RequestRules.from_environment()
        self.captioner = Captioner.load(context.artifacts["captioner"])

    def predict(self, context, model_input: pd.DataFrame, params=None):  # MLflow checks inputs against the signature
        if isinstance(model_input, pd.DataFrame):
            column = "image" if "image" in model_input.columns else model_input.columns[0]
            values = list(model_input[column])
        else:
            values = list(model_input if isinstance(model_input, (list, tuple)) else [model_input])
        width = beam_width(params, self.captioner.config.beam_width)
        captions = self.captioner.caption(self.rules.images(values), beam_width=width)
        return pd.DataFrame({"caption": captions})


mlflow.models.set_model(CaptionerModel())
