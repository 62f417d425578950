import sys

from batos.cli import main

sys.exit(main())
