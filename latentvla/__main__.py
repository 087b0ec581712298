import sys

from latentvla.cli import main

sys.exit(main())
