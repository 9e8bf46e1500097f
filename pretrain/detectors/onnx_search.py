"""The nearest-neighbour search's product in ONNX Runtime (MLAS) on CPU.

PatchCore's token score is ``min_j ||q - b_j||``, i.e. ``||q||^2 + min_j (||b_j||^2 - 2 q.b_j)``:
one matrix product and a row minimum. On the 2-core AMD EPYC these figures come from, torch's
float32 product (MKL) is about half as fast as ONNX Runtime's (docs/PERFORMANCE.md, "The search
in ONNX Runtime"), so on CPU the product and the minimum run as a two-node ONNX graph
(MatMul + ReduceMin) with the bank's squared norms folded into an extra column:
``[q, 1] @ [[-2 B^T], [||b||^2]]``. The graph is exported from torch once per process (no file,
no ``onnx`` package); ``session()`` is None where onnxruntime is not installed.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import torch
from torch import Tensor, nn

OPSET = 17


class _RowMinProduct(nn.Module):
    def forward(self, queries: Tensor, bank_t: Tensor) -> Tensor:
        return (queries @ bank_t).amin(dim=1)


@functools.cache
def session(threads: int):
    """An InferenceSession of ``(q [N,D], bt [D,M]) -> min_j (q @ bt)[:, j]`` on ``threads``
    threads, or None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            _RowMinProduct(),
            (torch.zeros(4, 3), torch.zeros(3, 5)),
            buffer,
            input_names=["queries", "bank_t"],
            output_names=["row_min"],
            dynamic_axes={"queries": {0: "n", 1: "d"}, "bank_t": {0: "d", 1: "m"}},
            opset_version=OPSET,
            dynamo=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # no spinning after a run: the torch ops that follow would lose a core to it
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def augmented_bank(bank: Tensor) -> np.ndarray:
    """[M,D] bank -> [D+1,M] float32 ``[[-2 B^T], [||b||^2]]`` (the graph's ``bank_t``)."""
    b = bank.detach().float().cpu().numpy()
    out = np.empty((b.shape[1] + 1, b.shape[0]), dtype=np.float32)
    np.multiply(b.T, -2.0, out=out[:-1])
    np.einsum("md,md->m", b, b, out=out[-1])
    return out


def nearest_distances_ort(queries: Tensor, bank_t: np.ndarray, chunk: int, ort_session) -> Tensor:
    """L2 distance of every query row [Q,D] to its nearest bank row, ``chunk`` queries per run
    of ``ort_session`` against ``augmented_bank(bank)``. The arithmetic around the run is numpy's:
    torch's OpenMP workers would spin through ONNX Runtime's run on the same cores."""
    q = queries.detach().float().cpu().numpy()
    q_aug = np.empty((q.shape[0], q.shape[1] + 1), dtype=np.float32)
    q_aug[:, :-1] = q
    q_aug[:, -1] = 1.0
    out = np.empty(q.shape[0], dtype=np.float32)
    for start in range(0, q.shape[0], chunk):
        part = q_aug[start : start + chunk]
        (row_min,) = ort_session.run(None, {"queries": part, "bank_t": bank_t})
        out[start : start + len(part)] = row_min
    out += np.einsum("qd,qd->q", q, q)
    return torch.from_numpy(np.sqrt(np.maximum(out, 0.0, out=out), out=out))
