"""Pure statistics over arrays: shift tests, transferability scores, 2-D maps."""
