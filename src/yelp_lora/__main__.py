"""`python -m yelp_lora` (also what `torchrun -m yelp_lora` runs)."""

import sys

from yelp_lora.cli import main

sys.exit(main())
