"""DyTox: transformers for continual learning with dynamic token expansion (Douillard et al., CVPR 2022).

The subpackages, from the bottom up (README, "Layout"): see each one's docstring.
"""
