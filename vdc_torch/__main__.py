"""``python -m vdc_torch`` runs the ``vdc`` command line (see :mod:`vdc_torch.faces.cli`)."""

import sys

from vdc_torch.faces.cli import main

if __name__ == "__main__":
    sys.exit(main())
