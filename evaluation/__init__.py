"""Measuring anomaly representations: metrics, the eval runner, benchmarks, reports.

- ``datasets``: MVTec-layout categories and the elpv solar cells.
- ``metrics``: image/pixel AUROC and AP, F1-max, AUPRO (MVTec definition).
- ``runner``: ``adqc eval``; ``bench``: ``adqc bench accuracy``; ``report``: HTML reports;
  ``significance``: paired bootstrap intervals.

The detectors and the anomaly-map post-processing they share live below, in
``pretrain.detectors``; this package may import ``inference`` and ``pretrain``, never the
other way round.
"""
