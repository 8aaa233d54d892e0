import sys

from mednext.cli import main

sys.exit(main())
