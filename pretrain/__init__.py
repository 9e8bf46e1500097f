"""pretrain: the ADPretrain library (pure torch, no server clients).

Owns: backbones (registry of frozen feature extractors), preprocess (image loading and the
uint8 -> normalised tensor step), residual (K-shot reference pools and cosine 1-NN residuals),
projector (the per-level learnable key/value attention projector), model (FeatureModel: raw /
residual / projected features), checkpoint (the one-file projector checkpoint format and
`load_feature_model`), plus losses, data, training and evaluation (see docs/ARCHITECTURE.md).

Typical use::

    from pretrain.checkpoint import load_feature_model
    model = load_feature_model("mobilenet_v2")          # shipped checkpoint
    x = model.preprocess(uint8_images)                  # [B,S,S,3] -> [B,3,S,S]
    pool = model.build_pool(model.preprocess(refs))     # K normal reference images
    feats = model.projected(x, pool)                    # per level [B,C,h,w]
"""
