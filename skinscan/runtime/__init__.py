"""One Predictor interface over PyTorch, ONNX Runtime and TensorRT.

A predictor takes a batch of preprocessed images (NCHW float32, see `skinscan.data.preprocess`)
and returns `Prediction(outputs)`: classifiers give [logits] or [logits, features] (last feature map, NCHW);
segmenters give [mask_logits]. `create_predictor(bundle, backend)` picks the backend by name.
"""

from skinscan.runtime.predictor import BACKENDS, Prediction, Predictor, create_predictor

__all__ = ["BACKENDS", "Prediction", "Predictor", "create_predictor"]
