"""``python -m edgemq``: same as the ``edgemq`` command."""

from edgemq.cli import main

main()
