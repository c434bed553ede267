"""One exception type for bad input: its message is a single line that names the problem."""


class GraphworldError(ValueError):
    """Bad graph-task input (unreachable target, cycle, malformed graph, ...)."""
