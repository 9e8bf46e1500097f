"""``adqc bench anomalib``: stock anomalib next to adqc, same weights, same images, one metric code.

Modules: ``cases`` (which images: classes, per-fabric groups, K shots), ``exchange`` (the uint8
images handed to the peer and its raw outputs), ``adqc_side`` (adqc's detectors on the same
arrays), ``scoring`` (pooled metrics with adqc's metric code, images/s), ``table`` (the
side-by-side markdown), ``cli`` (the command). The peer itself runs in its own virtual
environment (``benchmarks/anomalib/``), never in the product's.
"""
