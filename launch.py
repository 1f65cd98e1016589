#!/usr/bin/env python
"""fer-tune launcher: ``python launch.py --search vgg_spinal`` (see ``--help``)."""

import sys

from fer_tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
