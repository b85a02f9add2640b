"""``python -m mobile_vmoe.train ARGS`` is ``mvmoe train ARGS``; it is what torchrun launches::

    torchrun --standalone --nproc_per_node 2 -m mobile_vmoe.train --data synthetic --epochs 10
"""

import sys

from mobile_vmoe.cli import main

sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
main()
