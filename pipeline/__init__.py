"""Knowledge-extraction pipeline: one module per DVC stage plus the shared modules they use."""
