"""``python -m invismap``: the ``invismap`` command; ``torchrun -m invismap`` runs it in every process.

Example (two processes on one machine, the global batch of the config split between them)::

    torchrun --standalone --nproc_per_node 2 -m invismap distill configs/distill.yaml --run runs/distill/x
"""

import sys

from invismap.cli import main

if __name__ == "__main__":
    sys.exit(main())
