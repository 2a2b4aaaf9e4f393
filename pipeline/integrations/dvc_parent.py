"""A stage stops when the `dvc repro` that runs it stops.

DVC runs a stage as `$SHELL -c "python -m pipeline STAGE"` and lets it run. A SIGTERM to DVC
alone (an HPC scheduler's, `timeout`'s, `kill PID`) ended DVC and left the stage training as an
orphan; the next `dvc repro` then trained beside it in the same folders, and the run ended with
epochs missing from models/checkpoints. So a stage started by DVC watches the processes between
itself and DVC (the shell, when it did not exec, and DVC) and, once one of them has gone, stops
as a SIGTERM would stop it: the resume state of the last finished epoch is on disk, and the next
`dvc repro` resumes from it. A stage run by hand (no DVC_STAGE in its environment) is not
watched, nor is `nohup dvc repro &` itself: DVC lives on when the shell that started it ends.

It computes nothing for a stage, so no stage depends on it in dvc.yaml (errors.py's rule).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import psutil

DVC_STAGE_VARIABLE = "DVC_STAGE"  # DVC sets it for each stage command it runs
POLL_SECONDS = 1.0  # how soon after DVC's end the stage stops
EXIT_GRACE_SECONDS = 10.0  # then it exits even if a library's SIGTERM handler kept it going


def dvc_ancestors() -> list[psutil.Process]:
    """This process's ancestors up to the DVC process that runs the stage, DVC included: the
    ones that carry our DVC_STAGE were started for the stage (the shell); the first without it
    is DVC. [] outside DVC."""
    stage = os.environ.get(DVC_STAGE_VARIABLE)
    if not stage:
        return []
    chain: list[psutil.Process] = []
    process = psutil.Process().parent()
    while process is not None and process.pid > 1:
        chain.append(process)
        try:
            if process.environ().get(DVC_STAGE_VARIABLE) != stage:
                break  # DVC itself
            process = process.parent()
        except psutil.Error:  # another user's, or gone already: watch up to here
            break
    return chain


def first_gone(watched: list[psutil.Process]) -> psutil.Process | None:
    """The first of `watched` that has ended (its pid reused by another process counts)."""
    return next((process for process in watched if not process.is_running()), None)


def stop_with_dvc(stage: str) -> None:
    """Under DVC, stop this process (SIGTERM to itself) once DVC or the shell between has gone."""
    watched = dvc_ancestors()
    if not watched:
        return

    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(POLL_SECONDS):
            gone = first_gone(watched)
            if gone is not None:
                with contextlib.suppress(OSError, ValueError):  # its terminal went with it
                    print(
                        f"{stage}: stopping, as the dvc repro that ran it has stopped (pid "
                        f"{gone.pid} ended); run `dvc repro` again to go on (training resumes "
                        "from its last saved epoch)",
                        file=sys.stderr,
                        flush=True,
                    )
                os.kill(os.getpid(), signal.SIGTERM)
                stopped.wait(EXIT_GRACE_SECONDS)
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-dvc", daemon=True).start()
