import sys

from engine.cli import main
from engine.train.malloc import keep_freed_memory

keep_freed_memory()  # every command trains or evaluates: each step's memory is reused, not faulted in again
sys.exit(main())
