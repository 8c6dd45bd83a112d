"""Writers for the files of an output directory."""
