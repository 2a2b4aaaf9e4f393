"""The competition's data as files and arrays: pickle formats, synthetic stand-ins, the prepared arrays (numpy, no torch)."""
