import sys

from sleepy.koans.cli import main

sys.exit(main())
