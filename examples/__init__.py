"""Examples of using the pipeline on your own data."""
