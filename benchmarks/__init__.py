"""Benchmark drivers: tooling apart from the product, one package for every ``adqc bench`` run.

Layout:

- ``cli``: the ``adqc bench soak|triton|pipeline`` commands (light imports; mounted by
  adqc/cli.py).
- ``pipeline``: ``adqc bench pipeline``, frames/s and latency through Kafka -> ``adqc serve``
  -> results/alarms beside the engine alone; starts its own Kafka and Redis (deploy.servers).
- ``soak``: ``adqc bench soak``, the RSS of serve's per-frame memory path, hostile frames mixed in.
- ``triton``: ``adqc bench triton``, model-only latency/throughput of the Triton ensemble.
- ``peer/``: ``adqc bench anomalib|levels``, stock anomalib beside adqc (same weights, images
  and metric code) and the MobileNetV2 level screen.
- ``anomalib/``: scripts that run in the peer's own virtual environment (install.sh,
  run_anomalib.py), never imported by the product.

``adqc bench accuracy`` is the evaluation harness's own command (evaluation/). Layering:
adqc -> benchmarks -> ingest / evaluation / deploy -> inference -> pretrain; nothing below
imports this package. Results go to docs/ (docs/perf/, docs/results/).
"""
