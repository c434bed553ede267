"""One exception type for bad input: its message is a single line that names the problem."""


class GraphworldError(ValueError):
    """Bad graph-task input (unreachable target, cycle, malformed graph, ...)."""


def is_int(v) -> bool:
    """An integer that is not a bool (JSON true/false must not pass as 1/0)."""
    import numpy as np
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    """A real number that is not a bool."""
    import numpy as np
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
