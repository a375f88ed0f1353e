"""The compute stages: one module per expensive stage (its declaration and the function its notebook calls)."""
