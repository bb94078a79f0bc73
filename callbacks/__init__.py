"""The suite's callbacks, installed as ``lit_edify.callbacks`` (the folder sits at the top of the repository)."""
if __name__ != "lit_edify.callbacks":
    raise ImportError(f"{__name__} is imported as lit_edify.callbacks now (e.g. lit_edify.callbacks.ema.EMA); "
                      "`pip install -e .` installs it under that name")
