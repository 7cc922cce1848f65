"""The cross-validation modes of `moesim validate --cv`, in one place: the CLI's choice, the check in
`validation.run` and the residual summaries' wording all read this (no imports, so the CLI can at start-up)."""

# mode -> what each left-out group is
CV_MODES = {
    "source": "source",
    "config": "configuration",
    "model": "model",
    "system": "system",
}


def left_out_basis(mode: str) -> str:
    """The predictions a residual summary of a `--cv mode` run rests on, e.g. 'leave-one-model-out predictions'."""
    return f"leave-one-{CV_MODES[mode]}-out predictions"
