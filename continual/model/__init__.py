"""The network: layers (patch embedding, GPSA, class attention, SAB and TAB blocks, the memory-saving
autograd functions of the fast path) and DyTox itself (expansion, freezing, heads, forward).

It imports neither the configuration nor the runtime: it is built from a ``ModelConfig`` and never
looks at the device to choose its arithmetic (the GPSA kernel is a field of the config).
"""
