"""DyTox: transformers for continual learning with dynamic token expansion (Douillard et al., CVPR 2022).

The subpackages and how they depend on each other: docs/architecture.md; each has a docstring.
"""
