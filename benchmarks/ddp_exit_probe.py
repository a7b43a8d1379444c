"""Does a captured-DDP process exit? ``ddp_scaling.py`` for 2 epochs, then a timed ``shutdown()``.

    torchrun --standalone --nproc_per_node=2 benchmarks/ddp_exit_probe.py
    KEEP_GRAPHS=1 torchrun ...    # skip the graph release (the old code): hangs in destroy_process_group
    CAPTURE=off torchrun ...      # the eager DDP step

A ``faulthandler`` timer started at shutdown dumps every thread's stack and exits after 25 s.
"""

import faulthandler
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainkit import distributed

if os.environ.get("KEEP_GRAPHS"):
    distributed.release_at_shutdown = lambda graph: None
real_shutdown = distributed.shutdown


def timed_shutdown():
    faulthandler.dump_traceback_later(25, exit=True)
    t = time.perf_counter()
    real_shutdown()
    print(
        f"rank {os.environ.get('RANK')}: shutdown took {time.perf_counter() - t:.2f} s", flush=True
    )


distributed.shutdown = timed_shutdown
import ddp_scaling

ddp_scaling.distributed.shutdown = timed_shutdown
sys.argv = ["ddp_scaling.py", "--epochs", "2", "--capture", os.environ.get("CAPTURE", "on")]
ddp_scaling.main()
distributed.exit_process(0)
