"""Kept so that `python tuning/infra.py start|status|env|stop` goes on working: the local PostgreSQL and MLflow server
are captioning/serving/infra.py, also `python -m captioning.serving.infra` and the command `captioning-infra`."""
import sys

from captioning.serving.infra import main

if __name__ == "__main__":
    sys.exit(main())
