"""The one exception type a user sees: the CLI prints its message as a single line and exits 1."""


class NarratorError(Exception):
    """A problem with the user's input or setup, stated in one line that names the file and the fault."""


class ConfigError(NarratorError):
    """An unknown key, a wrong type, or two configs that do not fit together."""
