"""Python-backend model code for the Triton model repository (`adqc export triton`).

- :mod:`inference.triton.features`: ``adqc_features`` (preprocess -> backbone -> residual against
  the product's reference pool from the store -> projector), per-request errors.
- :mod:`inference.triton.preprocess`: ``adqc_preprocess``, only in the split layout.
- :mod:`inference.triton.stride8`: ``adqc_stride8``, stateless: uint8 images -> the raw
  stride-8 maps of the default detector (the Triton face of inference/stride8.py).

The repository's ``model.py`` files are two-line shims importing these classes, so the server's
Python environment needs adqc installed (docs/SERVING.md).
"""
