import sys

from nba.cli import main

# Guarded: a child process validating a draft (nba.policy.sandbox, multiprocessing's forkserver)
# imports the main module again, as __mp_main__; it must not start the CLI a second time.
if __name__ == "__main__":
    sys.exit(main())
