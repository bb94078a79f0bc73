"""``lit-edify`` sub-commands, one file each: argument parsing plus a call into pipelines/ or modules/.
Nothing in the library imports this package."""
