"""``adqc_preprocess`` (split layout only, `adqc export triton --split-preprocess`).

uint8 images [B,S,S,3] -> normalised float [B,3,S,S] with ``pretrain.preprocess.to_model_input``
and the backbone spec's mean/std: exactly the step ``adqc_features`` runs inline by default.
"""

from __future__ import annotations

import json

import numpy as np

try:  # only importable inside the Triton python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised only inside tritonserver
    pb_utils = None


def preprocess(images: np.ndarray, backbone: str) -> np.ndarray:
    """The numpy face of to_model_input for one request (what the model returns)."""
    from pretrain.backbones import get_spec
    from pretrain.preprocess import to_model_input

    return to_model_input(np.ascontiguousarray(images), get_spec(backbone)).numpy()


class TritonPythonModel:
    """Triton python-backend entry point."""

    def initialize(self, args: dict) -> None:
        from pretrain.backbones import get_spec

        config = json.loads(args["model_config"])
        self.spec = get_spec(config["parameters"]["backbone"]["string_value"])

    def execute(self, requests: list) -> list:
        import torch

        from pretrain.preprocess import to_model_input

        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, "IMAGES").as_numpy()
                with torch.inference_mode():
                    x = to_model_input(np.ascontiguousarray(images), self.spec).numpy()
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("INPUT", x)])
                )
            except Exception as exc:  # noqa: BLE001 - per-request error
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
                    )
                )
        return responses
