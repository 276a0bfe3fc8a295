"""Analysis of a run directory. Reads files only: never the engine, so a report
can be rebuilt from a run directory alone, years later, without Docker."""
