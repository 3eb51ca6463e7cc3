"""`python -m gateway.cli`, as the tests and benchmarks start the server."""

import sys

from gateway.cli.commands import main

sys.exit(main())
