"""partbench: how part-aware is a pretrained vision encoder, next to how well it knows objects.

Importing the package stays cheap (no torch, no timm) so that the CLI starts fast.
"""

__version__ = "0.1.0"
