"""`python -m siglip_fast bench|embed|classify` (also the `siglip-fast` console script); see siglip_fast.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
