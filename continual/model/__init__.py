"""The networks: their configuration (``config.py``), the layers (patch embedding, GPSA, class attention,
SAB and TAB blocks, ScaleNorm, the memory-saving autograd functions of the fast path), DyTox itself
(expansion, freezing, heads, forward), its encoders (the registry of ``encoders.py``: the ConViT's SABs,
the ResNet-18 of ``resnet.py``, any timm model through ``timm_encoder.py``), the
baseline of the paper's ablation (``baseline.py``), what every model is (``base.py``: ``ContinualModel``) and
``build.py``, the registry that makes or rebuilds a model by name.

It imports neither the configuration of a run nor the runtime: it is built from a ``ModelConfig`` and
never looks at the device to choose its arithmetic (the GPSA kernel is a field of the config).
"""
