"""spark-submit entry point for `hmrec rank`.

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 \
        --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \
        jobs/rank.py [the arguments of `hmrec rank --help`]
"""
import sys

from hmrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["rank", *sys.argv[1:]]))
