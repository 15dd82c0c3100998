"""Errors a user can act on. The CLI prints their message without a traceback (unless --debug)."""


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
    component that raises this, and fail on anything else.
    """


class NoFace(Exception):
    """A cropper found no face, or no landmarks, in one image.

    The message is the reason ("no face detected", "landmark file missing: ...") and is counted per reason
    in the run summary; what happens to the image is the recipe's ``crop.on_no_face`` policy.
    """
