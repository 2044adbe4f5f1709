"""The jobs: what each command does, and the Python API (`funcae_cli.train`, `load_run`, `Run`). A job reads the
store (the run directory), calls the libraries (training, inversion, plotting) and writes its results into the run
directory; it returns what the command reports and never prints."""
