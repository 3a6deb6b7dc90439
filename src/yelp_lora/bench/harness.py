"""Each bench path in its own long-lived process, the paths taking turns in rounds."""

from __future__ import annotations

import contextlib
from multiprocessing import get_context


def _run_worker(worker, connection, options: dict) -> None:
    try:
        worker(connection, **options)
    except Exception as err:  # reported to the parent, which raises it
        connection.send(err)


class PathProcess:
    """One bench path in its own long-lived process, run in turns with the others.

    Its peak memory is its own, and paths that take turns share a shared machine's slow and fast
    spells, which last minutes (measured: the same int8 pass at 150 and at 215 samples/s): paths
    run one after another would each catch a different one. The worker sends what it is once
    ready, answers each turn's work with (seconds, output), and its result when told to close.
    """

    def __init__(self, worker, **options):
        """Start `worker(connection, **options)` in a spawned process and wait for what it says it is."""
        context = get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_run_worker, args=(worker, child, options), daemon=True)
        self.process.start()
        self.info = self._receive()
        self.seconds: list[float] = []

    def _receive(self):
        message = self.connection.recv()
        if isinstance(message, Exception):
            self.process.join()
            raise message
        return message

    def turn(self, work):
        """Send one turn's work; return its output (the time it took is kept in `seconds`)."""
        self.connection.send(work)
        seconds, output = self._receive()
        self.seconds.append(seconds)
        return output

    def close(self):
        self.connection.send(None)
        result = self._receive()
        self.process.join()
        return result


def take_turns(processes: list[PathProcess], turns: list, before_round=lambda number: None) -> list[list]:
    """Round r gives turns[r] to every process, the order rotating each round; the outputs, per process."""
    outputs = [[] for _ in processes]
    for number, work in enumerate(turns):
        before_round(number)
        for offset in range(len(processes)):
            index = (number + offset) % len(processes)
            outputs[index].append(processes[index].turn(work))
    return outputs


@contextlib.contextmanager
def path_processes():
    """A list to start PathProcesses into; any still running on the way out are killed."""
    started: list[PathProcess] = []
    try:
        yield started
    finally:
        for handle in started:
            if handle.process.is_alive():
                handle.process.kill()
