import sys

from latprune.cli.app import main

sys.exit(main())
