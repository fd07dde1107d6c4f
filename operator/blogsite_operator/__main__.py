import sys

from blogsite_operator.cli import main

sys.exit(main())
