"""The errors medkeras raises on purpose, and the exit status each maps to in the CLI.

Anything a user can cause (a config typo, a bad file, a missing dataset) is one of these, so the CLI can print
one line (`medkeras: error: <what>: <why>`) instead of a traceback.
"""


class MedkerasError(Exception):
    """A run-time or data error the user can fix (CLI exit status 1)."""

    exit_code = 1


class ConfigError(MedkerasError):
    """A usage or configuration error: unknown key, wrong type, unknown name (CLI exit status 2)."""

    exit_code = 2


class DataError(MedkerasError, ValueError):
    """A file or dataset that cannot be read. Always names the file (or source) and the cause."""

    def __init__(self, path, cause):
        self.path = str(path)
        self.cause = str(cause)
        super().__init__(f"{self.path}: {self.cause}")


class DicomError(DataError):
    """A DICOM file that cannot be turned into Hounsfield units or pixels."""
