"""Errors a user can act on, and the exit codes of every ``fermetric`` command.

Exit codes (a contract, documented in the README):

    0    done
    1    a runtime failure (a FermetricError: unreadable data, a damaged checkpoint, a full disk, a plugin that broke)
    2    bad input, found before any work: a recipe key, a value out of range, a missing file or resource
    130  interrupted (Ctrl-C); 143 terminated (SIGTERM). Both leave a resumable run (``--resume``).

The CLI prints a FermetricError's message without a traceback (unless ``fermetric --debug``).
"""


class FermetricError(Exception):
    """A failure with a message meant for the user. Exit code 1."""

    exit_code = 1


class RecipeError(FermetricError):
    """The recipe (or a --set override) is wrong; nothing has run yet. Exit code 2."""

    exit_code = 2


class ParameterError(RecipeError, ValueError):
    """A component parameter has a name or value that does not exist or cannot work: a RecipeError for the CLI
    (exit 2), a ValueError for code that builds components directly."""


class MissingResource(FermetricError):
    """A component needs a local file or an optional package this machine lacks (weights, a model pack, dlib).

    Nothing is ever downloaded at run time: the message says how to provide it. The registry smoke tests skip a
    component that raises this, and fail on anything else. Exit code 2: the recipe names something absent.
    """

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill PID``): handled like Ctrl-C (the run is left resumable), exit 143."""

    exit_code = 143


def describe_os_error(exc: OSError) -> str:
    """An OSError as a person would want to read it: what failed, where, and what to do."""
    import errno

    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    text = f"{exc.strerror or exc}:{where}" if exc.strerror else f"{exc}"
    hints = {
        errno.ENOSPC: " (no space left on device: free some space or write elsewhere with --out; the previous checkpoint is intact)",
        errno.EROFS: " (a read-only file system: choose a writable --out)",
        errno.EACCES: " (permission denied: choose a folder you can write, with --out)",
        errno.EDQUOT: " (disk quota exceeded)",
    }
    return text + hints.get(exc.errno, "")


def handle_errors(fn):
    """Decorate a click command: user-facing errors end it with their message and exit code (see the module doc),
    no traceback unless ``fermetric --debug``."""
    import functools

    import click

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        root = ctx.find_root().obj
        debug = bool(getattr(root, "debug", False))
        try:
            return fn(*args, **kwargs)
        except FermetricError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:
            if debug:
                raise
            click.echo(f"Error: {describe_os_error(exc)}", err=True)
            ctx.exit(1)

    return wrapper


class NoFace(Exception):
    """A cropper found no face, or no landmarks, in one image.

    The message is the reason ("no face detected", "landmark file missing: ...") and is counted per reason
    in the run summary; what happens to the image is the recipe's ``crop.on_no_face`` policy.
    """
