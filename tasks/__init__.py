"""Pipeline stages: each module has a pure core and a thin `main(params)` that does the I/O."""
