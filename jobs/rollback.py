"""spark-submit entry point for `hmrec rollback`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/rollback.py [the arguments of `hmrec rollback --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["rollback", *sys.argv[1:]]))
