"""`python -m fruits …` and `spark-submit path/to/fruits/__main__.py …` both reach the CLI."""

from fruits.cli import main

if __name__ == "__main__":
    main()
