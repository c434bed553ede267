"""Bad input raises PcmiInputError: a ValueError whose message is one line naming the problem."""


class PcmiInputError(ValueError):
    pass
