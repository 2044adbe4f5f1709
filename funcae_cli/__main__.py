from funcae_cli.cli import entry

entry()
