"""The main() of every node of the stack: spin until Ctrl-C or shutdown, clean up, exit 0.

Why one helper: a Ctrl-C must end each node the same way, without a traceback and with exit
code 0, or `ros2 launch` reports the node as failed ("process has died ... exit code -2") and
prints KeyboardInterrupt tracebacks. Measured on the nodes as they were (each node's own
try/except around spin): one SIGINT was clean, but two SIGINTs a few milliseconds apart - what a
node under `ros2 launch` gets from a terminal's Ctrl-C, once from the terminal (the whole process
group) and once forwarded by launch - ended it with exit code -2, or with a KeyboardInterrupt
traceback out of torch's atexit finalizers when the second one came late.

So: the first SIGINT raises KeyboardInterrupt (ends the spin, or the node's construction), every
later one is ignored while the node shuts down and while the interpreter exits (a second SIGINT
during finalization, where Python puts handlers back to SIG_DFL, killed the process: -2). rclpy's own signal handler (installed by
rclpy.init) still runs first and shuts the context down, which wakes the executor at once; it
calls the handler installed here afterwards, and restores it when rclpy shuts down.
"""
from __future__ import annotations

import faulthandler
import signal
import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node


#: Seconds a node may take to stop after Ctrl-C before it writes every thread's stack to stderr (its log).
#: Below the 20 s after which `fedvla up robot` kills it, so a node that hangs while stopping says where.
STOP_WATCHDOG_S = 12.0


def arm_stop_watchdog(seconds: float = STOP_WATCHDOG_S) -> None:
    """If this process is still alive `seconds` from now, dump all threads' tracebacks to stderr (and go on).

    A node killed with SIGKILL after a hung shutdown leaves an exit code and nothing else; the dump is
    what tells which callback or thread kept it from stopping.
    """
    faulthandler.dump_traceback_later(seconds, repeat=False, file=sys.stderr, exit=False)


class _FirstInterruptOnly:
    """SIGINT handler: the first one raises KeyboardInterrupt, later ones (during shutdown) do nothing."""

    def __init__(self):
        self.stopping = False

    def __call__(self, signum, frame):  # noqa: ARG002 - signal handler signature
        if not self.stopping:
            self.stopping = True
            arm_stop_watchdog()
            raise KeyboardInterrupt


def run_node(make_node: Callable[[], Node], *, num_threads: int, args: list[str] | None = None,
             before_destroy: Callable[[Node], None] | None = None) -> int:
    """rclpy.init, build the node, spin it on a MultiThreadedExecutor until Ctrl-C or an external shutdown.

    Then `before_destroy(node)` (stop the node's own threads), executor shutdown, destroy_node and
    rclpy.try_shutdown, and return 0. A SIGINT while the node is still being built ends it the same
    way. Any other exception (a bad parameter, a bug) is raised after the same clean-up, so the node
    exits non-zero with its traceback. Call it from the main thread (Python delivers signals there), as
    the last thing of a process: on return SIGINT is ignored for the rest of the process's life.
    """
    interrupts = _FirstInterruptOnly()
    signal.signal(signal.SIGINT, interrupts)  # before rclpy.init: rclpy's handler chains to this one
    rclpy.init(args=args)
    executor = MultiThreadedExecutor(num_threads=num_threads)
    node = None
    try:
        try:
            node = make_node()
            executor.add_node(node)
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            if not interrupts.stopping:  # stopping for another reason than Ctrl-C (external shutdown, an error)
                arm_stop_watchdog()
            interrupts.stopping = True  # a SIGINT from here on (launch forwarding one more) changes nothing
            try:
                if node is not None and before_destroy is not None:
                    before_destroy(node)
            finally:
                executor.shutdown()
                if node is not None:
                    node.destroy_node()
                rclpy.try_shutdown()
    except KeyboardInterrupt:  # the first SIGINT's, raised only after rclpy's shutdown woke the spin: same end
        pass
    # The process ends now. Python's finalization puts a handled signal back to SIG_DFL (an ignored one it
    # leaves alone), so a SIGINT arriving while torch's atexit hooks run would kill the process (-2).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0
