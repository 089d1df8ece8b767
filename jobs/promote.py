"""spark-submit entry point for `hmrec promote`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/promote.py [the arguments of `hmrec promote --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
