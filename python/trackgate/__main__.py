import sys

from trackgate.cli import main

sys.exit(main())
