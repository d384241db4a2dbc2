"""One file per method; each builds its backbone and heads and returns a StepOutput from forward."""
