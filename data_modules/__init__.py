"""The data layer, installed as ``lit_edify.data_modules`` (the folder sits at the top of the repository)."""
if __name__ != "lit_edify.data_modules":
    raise ImportError(f"{__name__} is imported as lit_edify.data_modules now (e.g. lit_edify.data_modules.shapes."
                      "ShapesDataModule); `pip install -e .` installs it under that name")
