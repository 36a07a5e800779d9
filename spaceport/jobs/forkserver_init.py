"""Imported by the stage forkserver only (the last module of its preload list, spaceport.jobs.child.PRELOAD).

The forkserver ignores SIGTERM, so that a signal sent to the whole process group (systemd stopping the service, a
terminal) does not end it while its worker still stops the stage processes cleanly: multiprocessing learns of a
child's end through the forkserver, and without it would take a stage that still runs for one that crashed. The
forkserver ends when its worker ends. Stage processes set SIGTERM back to its default (``run_stage_process``).
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
