"""The errors medkeras raises on purpose, and the exit status each maps to in the CLI.

Anything a user can cause (a config typo, a bad file, a missing dataset) is one of these, so the CLI can print
one line (`medkeras: error: <what>: <why>`) instead of a traceback.
"""

import errno
import re


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


class ResourceError(MedkerasError):
    """The machine, not the file: out of memory, file handles or disk space while reading. Never a bad file, so
    `data.on_bad_file: skip` does not skip it (skipping every file of a split under memory pressure emptied it)."""


# errno values that describe the machine's state rather than the file's
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EAGAIN}


def raise_if_resource(exc: BaseException, path) -> None:
    """Re-raise `exc` as a `ResourceError` naming `path` when it is a machine limit, not a problem of the file."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
        what = "out of memory" if isinstance(exc, MemoryError) else str(exc).splitlines()[0]
        raise ResourceError(f"{path}: cannot read it now: {what} (a limit of this machine, not a fault of the file)") from exc



def one_line(exc: BaseException) -> str:
    """The error as one line. An error raised inside a traced function (a tf.data map, a `tf.function`) reaches us
    with TensorFlow's "in user code: File ..." frames prepended to its message; its own message is the last line."""
    text = str(exc).strip()
    if "in user code:" in text:
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(exc).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    elif text.startswith("Graph execution error") or text.startswith("{{function_node"):
        # TF's op errors: "Graph execution error:", the frames, then the op's own message above "[[{{node ...}}]]"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        at = next((i for i, line in enumerate(lines) if line.startswith("[[{{node")), len(lines))
        own = lines[at - 1] if at > 0 else lines[-1]
        own = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", own)  # eager: "{{function_node ...}} message"
        text = re.sub(r"\s*\[(\[\{\{node |Op:).*$", "", own) or text
    return text.splitlines()[0] if text else ""
