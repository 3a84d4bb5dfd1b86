"""A stand-in task for the study's scheduler test: it imports nothing heavy, so spawned workers start fast."""

import os
import time


def sleepy_task(kind, spec, directory, log_path):
    """Sleep ``spec["seconds"]``; return when and where it ran (the ``execute`` signature of run_jobs)."""
    start = time.time()
    time.sleep(spec["seconds"])
    return {"result": {"pid": os.getpid(), "start": start, "end": time.time(), "value": spec["value"]},
            "wall_time_s": time.time() - start}
