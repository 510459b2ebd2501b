"""invismap: pixel invisibility maps for color cameras, learned from color/thermal pairs.

Pipeline stages (each a sub-package usable without the CLI):
    data -> registration -> align -> detector -> distill -> invisibility -> report
"""

__version__ = "0.1.0"
