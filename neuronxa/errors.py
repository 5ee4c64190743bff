"""The one exception type that the command line turns into a one-line message instead of a traceback."""


class NeuronXAError(Exception):
    """A problem with the user's input or environment: the message says what, where, and what to do."""
