"""The ``orthodiffusion`` command line. Each module here with a ``register(subparsers)`` function
adds one or more subcommands; heavy imports stay inside the handlers so ``--help`` is instant."""
